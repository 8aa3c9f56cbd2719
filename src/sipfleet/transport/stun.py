"""STUN keep-alives on the SIP UDP port (RFC 5626 §8.2, answered per RFC 5389).

A UA behind NAT sends STUN Binding requests to our SIP port; the answer carries the
address we saw (XOR-MAPPED-ADDRESS), which lets it notice a NAT rebinding. Sans-IO.
"""

from __future__ import annotations

import ipaddress
import struct

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
HEADER_SIZE = 20
_HEADER = struct.Struct("!HHI12s")


def looks_like_stun(data: bytes) -> bool:
    """The first two bits of a STUN message are 0; a SIP message starts with a letter."""
    return len(data) >= HEADER_SIZE and data[0] < 0x40


def binding_response(data: bytes, host: str, port: int) -> bytes | None:
    """The success answer to a Binding request from (host, port); None when ``data`` is
    not a well-formed RFC 5389 Binding request (drop it: anything else is not ours)."""
    if len(data) < HEADER_SIZE:
        return None
    kind, length, cookie, transaction = _HEADER.unpack_from(data)
    if (
        kind != BINDING_REQUEST
        or cookie != MAGIC_COOKIE
        or length % 4
        or length != len(data) - HEADER_SIZE
    ):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    raw = address.packed
    mask = struct.pack("!I", MAGIC_COOKIE) + (transaction if address.version == 6 else b"")
    xored = bytes(a ^ b for a, b in zip(raw, mask, strict=True))
    family = 0x01 if address.version == 4 else 0x02
    value = struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored
    attribute = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    return _HEADER.pack(BINDING_SUCCESS, len(attribute), MAGIC_COOKIE, transaction) + attribute


def binding_request(transaction: bytes) -> bytes:
    """A Binding request without attributes (what a UA sends; used by tests)."""
    return _HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction)


def mapped_address(response: bytes) -> tuple[str, int] | None:
    """The XOR-MAPPED-ADDRESS of a Binding success response (used by tests)."""
    if len(response) < HEADER_SIZE + 12:
        return None
    kind, _, cookie, transaction = _HEADER.unpack_from(response)
    attr, size = struct.unpack_from("!HH", response, HEADER_SIZE)
    if kind != BINDING_SUCCESS or cookie != MAGIC_COOKIE or attr != XOR_MAPPED_ADDRESS:
        return None
    _, family, xport = struct.unpack_from("!BBH", response, HEADER_SIZE + 4)
    raw = response[HEADER_SIZE + 8 : HEADER_SIZE + 4 + size]
    mask = struct.pack("!I", MAGIC_COOKIE) + (transaction if family == 0x02 else b"")
    packed = bytes(a ^ b for a, b in zip(raw, mask, strict=True))
    return str(ipaddress.ip_address(packed)), xport ^ (MAGIC_COOKIE >> 16)
