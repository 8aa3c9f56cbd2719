"""HTTP Digest for SIP: header syntax and the hash arithmetic (RFC 2617, 7616, 8760).

Nonces, replay protection and the subscriber lookup live with the authenticating roles;
this module only parses and computes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import WS, quote, split_outside_quotes, unquote

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


@dataclass(slots=True)
class AuthHeader:
    """One Authorization/Proxy-Authorization or WWW-/Proxy-Authenticate value."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)  # keys lower case, values unquoted

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"

    @property
    def algorithm(self) -> str:
        return (self.params.get("algorithm") or "MD5").upper()

    @property
    def username(self) -> str | None:
        return self.params.get("username")

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def nonce(self) -> str | None:
        return self.params.get("nonce")


def parse_auth_header(text: str) -> AuthHeader:
    scheme, rest = _split_scheme(text.strip(WS))
    if not scheme:
        raise ParseError("Bad authorization header: no scheme")
    params: dict[str, str] = {}
    if rest:
        for item in split_outside_quotes(rest, ","):
            item = item.strip(WS)
            if not item:
                continue
            name, eq, value = item.partition("=")
            if not eq:
                # Non-Digest schemes may carry a bare token (RFC 4475 regaut01).
                params.setdefault("", item)
                continue
            params[name.strip(WS).lower()] = unquote(value.strip(WS))
    return AuthHeader(scheme, params)


def _split_scheme(text: str) -> tuple[str, str]:
    """The scheme and what follows it, separated by spaces or tabs."""
    for at, ch in enumerate(text):
        if ch in WS:
            return text[:at], text[at:].strip(WS)
    return text, ""


def format_challenge(
    realm: str,
    nonce: str,
    algorithm: str = "MD5",
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    parts = [
        f"realm={quote(realm)}",
        f"nonce={quote(nonce)}",
        f"algorithm={algorithm}",
        'qop="auth"',
    ]
    if opaque is not None:
        parts.append(f"opaque={quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


def hash_hex(algorithm: str, text: str) -> str:
    hasher = ALGORITHMS.get(algorithm.upper())
    if hasher is None:
        raise ParseError(f"Unsupported digest algorithm {algorithm!r}")
    return hasher(text.encode("utf-8")).hexdigest()


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    return hash_hex(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest for qop=auth or no qop (RFC 2617 §3.2.2.1)."""
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    if qop:
        return hash_hex(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return hash_hex(algorithm, f"{ha1}:{nonce}:{ha2}")


def format_credentials(
    username: str,
    realm: str,
    nonce: str,
    uri: str,
    response: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    opaque: str | None = None,
) -> str:
    """An Authorization value, as a UA would write it (used by tests and probes)."""
    parts = [
        f"username={quote(username)}",
        f"realm={quote(realm)}",
        f"nonce={quote(nonce)}",
        f"uri={quote(uri)}",
        f"response={quote(response)}",
        f"algorithm={algorithm}",
    ]
    if qop:
        parts += [f"qop={qop}", f"nc={nc}", f"cnonce={quote(cnonce or '')}"]
    if opaque is not None:
        parts.append(f"opaque={quote(opaque)}")
    return "Digest " + ", ".join(parts)
