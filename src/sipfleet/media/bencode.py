"""Bencode, the encoding of rtpengine's ng protocol: sans-IO, bytes in, values out.

Four kinds of value: integers ``i42e``, byte strings ``4:spam``, lists ``l…e`` and
dictionaries ``d…e`` (keys are byte strings). ``encode`` also takes ``str`` (as UTF-8)
for strings and keys; ``decode`` returns ``bytes`` for both, since what rtpengine sends
(an SDP, an error reason) is bytes until the caller says otherwise.

Written here rather than taken from PyPI: the format is a page of code, and what
matters for us is that ``decode`` of bytes from the network raises ``BencodeError``
and nothing else, however malformed they are, within bounded depth and time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

from sipfleet.media.errors import BencodeError

# What decode returns.
Value: TypeAlias = int | bytes | list["Value"] | dict[bytes, "Value"]
# What encode accepts: also str, tuples and any mapping with str or bytes keys.
Encodable: TypeAlias = (
    int
    | bytes
    | str
    | Sequence["Encodable"]
    | Mapping[str, "Encodable"]
    | Mapping[bytes, "Encodable"]
)

# rtpengine's replies nest a few levels (query: tags -> medias -> streams -> endpoint);
# a bound keeps a hostile datagram of "llll…" from exhausting the stack.
MAX_DEPTH: Final = 32
_DIGITS: Final = frozenset(b"0123456789")


def encode(value: Encodable) -> bytes:
    """The bencoding of ``value``; dictionary keys sorted, as the format asks.

    Raises TypeError for a value of another type (a bug of the caller, not bad input)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Encodable, out: list[bytes]) -> None:
    if isinstance(value, bool):  # an int to Python, but meaningless to rtpengine
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | str):
        _encode_string(value, out)
    elif isinstance(value, Mapping):
        out.append(b"d")
        keyed = sorted((_key_bytes(key), item) for key, item in value.items())
        for key, item in keyed:
            _encode_string(key, out)
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, Sequence):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(f"bencode dictionary keys are strings, not {type(key).__name__}")


def _encode_string(value: bytes | str, out: list[bytes]) -> None:
    raw = value.encode() if isinstance(value, str) else value
    out.append(b"%d:" % len(raw))
    out.append(raw)


def decode(data: bytes) -> Value:
    """The one value ``data`` holds. BencodeError if it is malformed or followed by more."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value")
    return value


def _decode(data: bytes, start: int, depth: int) -> tuple[Value, int]:
    if start >= len(data):
        raise BencodeError("truncated: a value expected at the end")
    if depth > MAX_DEPTH:
        raise BencodeError(f"nested deeper than {MAX_DEPTH}")
    kind = data[start]
    if kind == ord("i"):
        return _decode_int(data, start)
    if kind in _DIGITS:
        return _decode_string(data, start)
    if kind == ord("l"):
        return _decode_list(data, start, depth)
    if kind == ord("d"):
        return _decode_dict(data, start, depth)
    raise BencodeError(f"unexpected byte {data[start : start + 1]!r} at {start}")


def _decode_int(data: bytes, start: int) -> tuple[int, int]:
    end = data.find(b"e", start + 1)
    if end < 0:
        raise BencodeError(f"unterminated integer at {start}")
    return _parse_number(data[start + 1 : end], start, signed=True), end + 1


def _decode_string(data: bytes, start: int) -> tuple[bytes, int]:
    colon = data.find(b":", start)
    if colon < 0:
        raise BencodeError(f"string length without ':' at {start}")
    length = _parse_number(data[start:colon], start, signed=False)
    end = colon + 1 + length
    if end > len(data):
        raise BencodeError(f"truncated: string of {length} bytes at {start}")
    return data[colon + 1 : end], end


def _parse_number(digits: bytes, start: int, *, signed: bool) -> int:
    """Canonical decimal only: no '+', no spaces, no leading zeros, no '-0'.

    int() alone would accept all of those (and '1_000'), so the digits are checked."""
    body = digits[1:] if signed and digits.startswith(b"-") else digits
    canonical = (
        bool(body)
        and all(byte in _DIGITS for byte in body)
        and (body == b"0" or not body.startswith(b"0"))
        and digits != b"-0"
    )
    if not canonical or len(body) > 20:  # 20 digits: more than any 64-bit value
        raise BencodeError(f"bad number {digits[:24]!r} at {start}")
    return int(digits)


def _decode_list(data: bytes, start: int, depth: int) -> tuple[list[Value], int]:
    items: list[Value] = []
    position = start + 1
    while position < len(data) and data[position] != ord("e"):
        item, position = _decode(data, position, depth + 1)
        items.append(item)
    if position >= len(data):
        raise BencodeError(f"unterminated list at {start}")
    return items, position + 1


def _decode_dict(data: bytes, start: int, depth: int) -> tuple[dict[bytes, Value], int]:
    # rtpengine does not sort its keys (docs/ng_control_protocol.md), so order is not
    # checked; a repeated key keeps its last value.
    entries: dict[bytes, Value] = {}
    position = start + 1
    while position < len(data) and data[position] != ord("e"):
        if data[position] not in _DIGITS:
            raise BencodeError(f"dictionary key is not a string at {position}")
        key, position = _decode_string(data, position)
        entries[key], position = _decode(data, position, depth + 1)
    if position >= len(data):
        raise BencodeError(f"unterminated dictionary at {start}")
    return entries, position + 1
