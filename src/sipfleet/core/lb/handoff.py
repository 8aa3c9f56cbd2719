"""Messages between the LB's worker processes, over their private UDP control sockets.

A TCP connection lives in the worker that accepted it, and each flow is kept alive by
one worker; whatever reaches another worker is handed over:

- ``Received``: a request for a flow whose connection another worker holds: that worker
  handles it as if it had received it (so it can answer 430 when the flow is gone);
- ``Send``: bytes for a connection of that worker (a response on its way to a client);
- ``Learn``: what a REGISTER 2xx said about a flow that worker keeps alive;
- ``Answered``: an answer to a keepalive ping of that worker;
- ``Loss``: what a registrar's overload control asked (RFC 7339): its answers all reach
  one worker (the kernel spreads datagrams by their addresses), its REGISTERs every one.

Only datagrams from another worker's control socket are accepted (the receiving side
checks the source address; nothing else can bind those ports).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sipfleet.sip.flow import Flow
from sipfleet.transport.base import Peer, TransportName

MAGIC = b"SFLB"
_RECEIVED, _SEND, _LEARN, _ANSWERED, _LOSS = b"R", b"S", b"L", b"A", b"O"
_NO_CONNECTION = (1 << 64) - 1
_PEER = struct.Struct("!BQHH")  # transport (_TRANSPORT_CODES), connection id, port, local port
_TRANSPORT_CODES: tuple[TransportName, ...] = ("udp", "tcp", "tls", "ws", "wss")
_SEND_HEAD = struct.Struct("!QHB")  # connection id, port, transport (_TRANSPORT_CODES)
_LEARN_HEAD = struct.Struct("!I")  # lifetime
_ANSWERED_HEAD = struct.Struct("!Q")  # flow id
_LOSS_HEAD = struct.Struct("!HBId")  # port, percent, validity (ms), oc-seq


@dataclass(frozen=True, slots=True)
class Received:
    data: bytes
    peer: Peer


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    connection_id: int
    host: str
    port: int
    # the connection's kind: once it is gone, only a TCP destination may be reconnected
    transport: TransportName = "tcp"


@dataclass(frozen=True, slots=True)
class Learn:
    token: str
    aor: str
    lifetime: int


@dataclass(frozen=True, slots=True)
class Answered:
    flow_id: int


@dataclass(frozen=True, slots=True)
class Loss:
    host: str
    port: int
    loss: int  # percent
    validity_ms: int
    seq: float


Handed = Received | Send | Learn | Answered | Loss


class BadHandoff(ValueError):
    pass


def _text(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise BadHandoff("field too long")
    return bytes([len(raw)]) + raw


def _read_text(data: bytes, at: int) -> tuple[str, int]:
    if at >= len(data):
        raise BadHandoff("truncated")
    end = at + 1 + data[at]
    if end > len(data):
        raise BadHandoff("truncated")
    return data[at + 1 : end].decode(), end


def encode(message: Handed) -> bytes:
    if isinstance(message, Received):
        peer = message.peer
        connection = _NO_CONNECTION if peer.connection_id is None else peer.connection_id
        kind = _TRANSPORT_CODES.index(peer.transport)
        head = _PEER.pack(kind, connection, peer.port, peer.local_port)
        return b"".join(
            (MAGIC, _RECEIVED, head, _text(peer.host), _text(peer.local_host), message.data)
        )
    if isinstance(message, Send):
        kind = _TRANSPORT_CODES.index(message.transport)
        head = _SEND_HEAD.pack(message.connection_id, message.port, kind)
        return b"".join((MAGIC, _SEND, head, _text(message.host), message.data))
    if isinstance(message, Learn):
        head = _LEARN_HEAD.pack(message.lifetime)
        return b"".join((MAGIC, _LEARN, head, _text(message.token), message.aor.encode()))
    if isinstance(message, Loss):
        head = _LOSS_HEAD.pack(message.port, message.loss, message.validity_ms, message.seq)
        return b"".join((MAGIC, _LOSS, head, _text(message.host)))
    return MAGIC + _ANSWERED + _ANSWERED_HEAD.pack(message.flow_id)


def decode(data: bytes) -> Handed:
    """Raises BadHandoff for anything that is not a well-formed handoff."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 1:
        raise BadHandoff("not a handoff")
    kind, at = data[4:5], 5
    try:
        if kind == _RECEIVED:
            kind_code, connection, port, local_port = _PEER.unpack_from(data, at)
            if kind_code >= len(_TRANSPORT_CODES):
                raise BadHandoff(f"unknown transport {kind_code}")
            host, at = _read_text(data, at + _PEER.size)
            local_host, at = _read_text(data, at)
            peer = Peer(
                _TRANSPORT_CODES[kind_code],
                host,
                port,
                local_host,
                local_port,
                None if connection == _NO_CONNECTION else connection,
            )
            return Received(data[at:], peer)
        if kind == _SEND:
            connection, port, kind_code = _SEND_HEAD.unpack_from(data, at)
            if kind_code >= len(_TRANSPORT_CODES):
                raise BadHandoff(f"unknown transport {kind_code}")
            host, at = _read_text(data, at + _SEND_HEAD.size)
            return Send(data[at:], connection, host, port, _TRANSPORT_CODES[kind_code])
        if kind == _LEARN:
            (lifetime,) = _LEARN_HEAD.unpack_from(data, at)
            token, at = _read_text(data, at + _LEARN_HEAD.size)
            return Learn(token, data[at:].decode(), lifetime)
        if kind == _ANSWERED:
            (flow_id,) = _ANSWERED_HEAD.unpack_from(data, at)
            return Answered(flow_id)
        if kind == _LOSS:
            port, loss, validity_ms, seq = _LOSS_HEAD.unpack_from(data, at)
            host, at = _read_text(data, at + _LOSS_HEAD.size)
            return Loss(host, port, loss, validity_ms, seq)
    except (struct.error, UnicodeDecodeError) as exc:
        raise BadHandoff(str(exc)) from None
    raise BadHandoff(f"unknown kind {kind!r}")


def owner_of_flow(flow: Flow, workers: int) -> int:
    """The worker that keeps ``flow`` alive: the one holding its connection (TCP), else
    the one that made the token (modulo, so a smaller worker count still covers all)."""
    return flow.worker % workers if flow.transport == "udp" else flow.worker
