"""Steering between the worker processes of a stateful role (sans-IO): which worker owns
a message, and the bytes one worker hands another.

A stateful proxy with ``node.workers`` processes keeps each transaction in one of them,
but the kernel deals datagrams to the workers by their source, so the caller's, the
callee's and each LB's messages of one call reach different workers. Every message has an
owner, chosen from its Call-ID alone: the proxy never rewrites a Call-ID, so an INVITE,
its retransmissions, its CANCEL, its ACK, every response to it (the next hop echoes the
Call-ID) and the dialog's later requests all have the same owner. A worker that gets a
message it does not own hands the raw bytes and their peer to the owner
(``transport/inboxes.py``), which handles them as if it had received them.

The Call-ID is found by a scan of the header block, before any parsing: the exact
``Call-ID:`` that nearly every UA writes costs one ``bytes.find``; anything else (other
case, the compact ``i:``, space before the colon) one regular expression. A message
without a findable Call-ID has no owner and is handled where it arrived (the parser then
answers it 400, as with one worker). Only the choice among our own workers depends on
the packet, and a sender could pick that anyway by picking its Call-ID.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from sipfleet.transport.base import Destination, Peer, TransportName

_EXACT: Final = b"\nCall-ID:"
_ANY_FORM: Final = re.compile(rb"\n(?:call-id|i)[ \t]*:", re.IGNORECASE)
_HEADER_END: Final = b"\r\n\r\n"
_BLANK: Final = b" \t\r"


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID header's value as written (case kept), None when there is none to find
    in the header block or it is empty (a folded value: handled where it arrived)."""
    end = data.find(_HEADER_END)
    if end < 0:
        end = len(data)
    at = data.find(_EXACT, 0, end)
    if at >= 0:
        start = at + len(_EXACT)
    else:
        found = _ANY_FORM.search(data, 0, end)
        if found is None:
            return None
        start = found.end()
    stop = data.find(b"\n", start, end)
    value = data[start : stop if stop >= 0 else end].strip(_BLANK)
    return value or None


def owner_of_call_id(call_id: bytes, workers: int) -> int:
    """A stable hash (the same in every process and after a restart), not ``hash()``,
    which each process seeds at random."""
    return zlib.crc32(call_id) % workers


def owner_of(data: bytes, workers: int) -> int | None:
    """The worker that owns the message ``data``; None: whichever received it."""
    call_id = call_id_of(data)
    return None if call_id is None else owner_of_call_id(call_id, workers)


# -- the handoff: what one worker sends another over its private inbox --------------------
# Received: a message to handle as if it had arrived at the owner (the peer it came from,
#   the local socket, the TCP connection of the worker that holds it).
# Send: bytes for a TCP connection the receiving worker holds (an answer on its way back).
_RECEIVED: Final = 0x52  # "R"
_SEND: Final = 0x53  # "S"
_NO_CONNECTION: Final = (1 << 64) - 1
_HEAD: Final = struct.Struct("!BBQHHBB")  # kind, tcp?, connection, port, local port, lengths


@dataclass(frozen=True, slots=True)
class Received:
    data: bytes
    peer: Peer


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    destination: Destination  # TCP, with the connection id of the receiving worker


Handoff = Received | Send


class BadHandoff(ValueError):
    """Bytes on an inbox that no worker wrote (only a bug can cause it)."""


def encode(message: Handoff) -> bytes:
    if isinstance(message, Received):
        transport, host, port, local_host, local_port, connection = message.peer
        kind = _RECEIVED
    else:
        transport, host, port, connection, local = message.destination
        local_host, local_port = local if local is not None else ("", 0)
        kind = _SEND
    raw_host, raw_local = host.encode(), local_host.encode()
    if len(raw_host) > 255 or len(raw_local) > 255:
        raise BadHandoff("host too long")
    head = _HEAD.pack(
        kind,
        transport == "tcp",
        _NO_CONNECTION if connection is None else connection,
        port,
        local_port,
        len(raw_host),
        len(raw_local),
    )
    return b"".join((head, raw_host, raw_local, message.data))


def decode(data: bytes) -> Handoff:
    """Raises BadHandoff for anything ``encode`` did not make."""
    try:
        kind, tcp, connection, port, local_port, host_size, local_size = _HEAD.unpack_from(data)
    except struct.error:
        raise BadHandoff("truncated") from None
    at = _HEAD.size + host_size + local_size
    if at > len(data) or kind not in (_RECEIVED, _SEND):
        raise BadHandoff("malformed")
    try:
        host = data[_HEAD.size : _HEAD.size + host_size].decode()
        local_host = data[_HEAD.size + host_size : at].decode()
    except UnicodeDecodeError:
        raise BadHandoff("host not text") from None
    connection_id = None if connection == _NO_CONNECTION else connection
    transport: TransportName = "tcp" if tcp else "udp"
    if kind == _RECEIVED:
        return Received(
            data[at:], Peer(transport, host, port, local_host, local_port, connection_id)
        )
    local = (local_host, local_port) if local_host else None
    return Send(data[at:], Destination(transport, host, port, connection_id, local))
