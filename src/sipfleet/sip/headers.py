"""Header names: canonical keys, compact forms, and the spelling used when we write one."""

from __future__ import annotations

import sys
from typing import Final

from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import TOKEN_CHARS
from sipfleet.sip.memo import Memo

# RFC 3261 §7.3.3 and later extensions.
COMPACT_FORMS: Final = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "n": "identity-info",
}

# How we write a header: these by hand, the others capitalised per word (``spelling``).
_SPELLED: Final = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1).
LIST_HEADERS: Final = frozenset(
    {
        "via",
        "route",
        "record-route",
        "path",
        "contact",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "allow",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "service-route",
        "p-asserted-identity",
        "privacy",
        "reason",
        "security-client",
        "security-server",
        "security-verify",
    }
)

# Headers that may appear once only.
SINGLE_HEADERS: Final = frozenset(
    {
        "from",
        "to",
        "call-id",
        "cseq",
        "max-forwards",
        "content-length",
        "content-type",
        "expires",
        "min-expires",
    }
)

# Bounded memos (sip/memo.py): names and keys may come from packets.
# Name as written -> key; read directly (``HEADER_KEYS.table.get``) for every header line.
HEADER_KEYS: Final = Memo[str, str](4096)
_SPELLING: Final = Memo[str, str](1024, _SPELLED)  # key -> how we write it


def header_key(name: str) -> str:
    """Canonical (lower-case, long-form) key of a header name as written on the wire."""
    key = HEADER_KEYS.table.get(name)
    if key is not None:
        return key
    stripped = name.rstrip(" \t")  # "Via :" is legal; a leading blank means folding
    if not stripped or not all(ch in TOKEN_CHARS for ch in stripped):
        raise ParseError("Bad header name")
    lowered = stripped.lower()
    # Interned, so the list scans of the accessors (keys.index("via")) match by identity.
    return HEADER_KEYS.put(name, sys.intern(COMPACT_FORMS.get(lowered, lowered)))


def spelling(key: str) -> str:
    """How we write a header we add ourselves."""
    written = _SPELLING.table.get(key)
    if written is None:
        written = _SPELLING.put(key, "-".join(part.capitalize() for part in key.split("-")))
    return written
