"""Small lexical helpers shared by the header and URI parsers.

Everything here works on ``str`` values decoded from the wire as latin-1, so every byte
maps to one character and serialisation gives back the original bytes exactly.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

from sipfleet.sip.errors import ParseError

Params = dict[str, str | None]

# Linear white space inside a header line (after unfolding). Not str.strip()'s default:
# that also eats \x85 and \xa0, which are bytes of UTF-8 text decoded as latin-1.
WS: Final = " \t"

# RFC 3261 §25.1 token characters.
TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_COMMA_IN_ANGLE: Final = re.compile(r"<[^>]*,")
_TOKEN: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")


def is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def split_outside_quotes(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on ``sep`` where it is not inside a quoted string or <...>; at most
    ``maxsplit`` times when it is not negative (as ``str.split``)."""
    if '"' not in text and "<" not in text:
        return text.split(sep, maxsplit)
    search = (_SPECIALS.get(sep) or _specials(sep)).search
    parts: list[str] = []
    start = 0
    pos = 0
    in_angle = False
    # Jump from one special character to the next: C-speed scanning, not a Python loop
    # over every character (a 64 kB header must not cost milliseconds).
    while (found := search(text, pos)) is not None:
        at = found.start()
        ch = text[at]
        if ch == '"':
            closing = _QUOTED_REST.match(text, at + 1)
            if closing is None:
                raise ParseError("Unterminated quoted string")
            pos = closing.end()
            continue
        if ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif not in_angle:
            parts.append(text[start:at])
            start = at + 1
            if len(parts) == maxsplit:
                break
        pos = at + 1
    parts.append(text[start:])
    return parts


def _specials(sep: str) -> re.Pattern[str]:
    """The characters split_outside_quotes stops at."""
    return re.compile('["<>' + re.escape(sep) + "]")  # re caches it


_SPECIALS: Final = {sep: _specials(sep) for sep in ",;"}  # the separators the SIP layer uses

# The rest of a quoted string after its opening quote, written as runs of ordinary
# characters ("unrolled"): Python's re is many times slower on a per-character
# alternation like (?:[^"\\]|\\.)*.
_QUOTED_REST: Final = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def split_values(text: str) -> list[str]:
    """Split a comma-separated header value into its elements, trimmed, empties dropped."""
    if "," not in text:
        stripped = text.strip(WS)
        return [stripped] if stripped else []
    if '"' not in text and _COMMA_IN_ANGLE.search(text) is None:
        parts = text.split(",")
    else:
        parts = split_outside_quotes(text, ",")
    return [stripped for part in parts if (stripped := part.strip(WS))]


def split_first(text: str) -> tuple[str, str]:
    """The first element of a comma-separated header value, trimmed, and the text after
    the comma that ends it ("" when it is the last).

    ``first`` is ``split_values(text)[0]`` ("" when there is none: empty elements are
    skipped) and ``split_values(rest)`` gives the others, but nothing after the first
    element is split or looked at: what reading the top Via or Route of a list needs.
    """
    while True:
        comma = text.find(",")
        if comma == -1:
            return text.strip(WS), ""
        if '"' in text or "<" in text:  # the comma may be inside a quoted string or <...>
            parts = _cut_after_name_addr(text, comma) if '"' not in text else None
            if parts is None:
                parts = split_outside_quotes(text, ",", 1)
            if len(parts) == 1:
                return text.strip(WS), ""
            first, rest = parts
        else:
            first, rest = text[:comma], text[comma + 1 :]
        first = first.strip(WS)
        if first:
            return first, rest
        text = rest


def _cut_after_name_addr(text: str, comma: int) -> list[str] | None:
    """``split_outside_quotes(text, ",", 1)`` found without its character scan, for the
    usual Route, Record-Route or Contact list (no quote; ``comma``, the first comma, comes
    after the first ``<``): the cut is the first comma after its ``>``, when no other
    ``<`` comes before it. None: not laid out so, the scan decides."""
    lt = text.find("<")
    if lt < 0 or comma < lt:
        return None
    gt = text.find(">", lt)
    if gt < 0:
        return None
    cut = text.find(",", gt)
    end = cut if cut >= 0 else len(text)
    if text.find("<", lt + 1, end) >= 0:
        return None
    return [text[:cut], text[cut + 1 :]] if cut >= 0 else [text]


_NAME = r"[A-Za-z0-9.!%*_+`'~\-\[\]:/&$]+"
_VALUE = r"(?:[^;\"\s<>,]+|\"[^\"\\]*(?:\\.[^\"\\]*)*\")"
_ONE_PARAM = rf"[ \t]*{_NAME}(?:[ \t]*=[ \t]*{_VALUE})?[ \t]*"
_PARAMS: Final = re.compile(rf"{_ONE_PARAM}(?:;{_ONE_PARAM})*", re.S)
# The usual case: no blanks, no quotes. Validated by one character class, split by str.split.
PLAIN_PARAM_CHARS: Final = r"A-Za-z0-9.!%*_+`'~\-\[\]:/&$=;@"
_PLAIN_PARAMS: Final = re.compile(rf"[{PLAIN_PARAM_CHARS}]+")


def parse_params(text: str, what: str) -> Params:
    """Parse ``name=value;flag`` (the ';' before the first one already removed).

    Names are case-insensitive (stored lower-case); values keep their case and quotes.
    """
    if not text:
        return {}
    if _PLAIN_PARAMS.fullmatch(text) is not None:
        return parse_plain_params(text, what)
    if _PARAMS.fullmatch(text) is None:
        raise ParseError(f"Bad parameters in {what}")
    params = {}
    for item in split_outside_quotes(text, ";"):
        name, eq, value = item.partition("=")
        params[name.strip(WS).lower()] = value.strip(WS) if eq else None
    return params


# Whether parameter text holds only PLAIN_PARAM_CHARS (and is not empty): a match or None.
match_plain_params: Final = _PLAIN_PARAMS.fullmatch


def parse_plain_params(text: str, what: str) -> Params:
    """``parse_params`` for text known to hold only PLAIN_PARAM_CHARS (a caller whose
    own regex matched them spares the second match)."""
    if not text:
        return {}
    if ";" not in text:  # one parameter, as in most From/To/Route values
        name, eq, value = text.partition("=")
        if not name or (eq and (not value or "=" in value)):
            raise ParseError(f"Bad parameters in {what}")
        return {name.lower(): value if eq else None}
    params: Params = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name or (eq and (not value or "=" in value)):
            raise ParseError(f"Bad parameters in {what}")
        params[name.lower()] = value if eq else None
    return params


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def unquote(value: str) -> str:
    """Remove the quotes of a quoted-string, resolving backslash escapes."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" not in inner:
            return inner
        out = []
        i = 0
        while i < len(inner):
            ch = inner[i]
            if ch == "\\" and i + 1 < len(inner):
                i += 1
                ch = inner[i]
            out.append(ch)
            i += 1
        return "".join(out)
    return value


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unescape(text: str) -> str:
    """Resolve %HH escapes (used for URI user/password comparison)."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("latin-1")


def parse_port(text: str, what: str) -> int:
    if not (text.isdigit() and text.isascii()) or len(text) > 5:
        raise ParseError(f"Bad port in {what}")
    port = int(text)
    if port > 65535:
        raise ParseError(f"Port out of range in {what}")
    return port


def parse_int(text: str, what: str, maximum: int = 2**32 - 1) -> int:
    text = text.strip(WS)
    if not (text.isdigit() and text.isascii()) or len(text) > 10:
        raise ParseError(f"Bad {what}")
    value = int(text)
    if value > maximum:
        raise ParseError(f"{what} out of range")
    return value
