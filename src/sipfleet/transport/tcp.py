"""TCP and TLS: listeners, outbound connections and the connection table.

TLS listeners (``start(..., tls_sockets, certificates)``) share the table and every rule
below with TCP: a TLS connection is a TCP connection whose bytes pass through asyncio's
TLS layer (the handshake must finish within ``read_timeout_s``). Its peer says ``tls``.
TLS connections are only accepted, never opened: a message for a TLS destination without
an open connection is refused (TransportError). WebSocket listeners (``ws_sockets``,
``wss_sockets``: RFC 7118) are the same again with ``transport/ws.py`` framing the
messages instead of the SIP stream framer; their peers say ``ws`` or ``wss``, and they
too are only accepted.

Each connection cuts its byte stream into messages with the SIP core's StreamFramer and
answers CRLFCRLF pings with a CRLF pong (RFC 5626 §8.1), within a budget per connection
(``pong_burst``, refilled at ``pongs_per_s``): pings past it are not answered, so a
stream of pings costs framing only. A pong for a connection already on its way out is
dropped. The table finds a connection by
its id (the one a request arrived on, RFC 3261 §18.2.2) or by remote address (reuse,
§18.1.1), and opens one when there is none.

Limits, all per process: accepted connections beyond ``max_connections`` are closed at
once; a started message (or, on an accepted connection, the first message) must be
complete within ``read_timeout_s`` (slow senders); a connection without traffic for
``idle_timeout_s`` is closed; a message larger than ``max_message_size`` is answered by
the sink (513) and the connection closed; a peer that does not read is dropped when
``max_write_buffer`` bytes wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import cast

from sipfleet.sip import ParseError, StreamFramer
from sipfleet.sip.parser import KeepAlivePing, StreamItem
from sipfleet.transport.base import (
    Destination,
    FrameSink,
    Peer,
    TransportError,
    TransportLimits,
    TransportName,
)
from sipfleet.transport.sockets import family_of, listen_address_of, normalise_host
from sipfleet.transport.tls import TlsCertificates
from sipfleet.transport.ws import WebSocketCodec

log = logging.getLogger(__name__)

PONG = b"\r\n"
PING = b"\r\n\r\n"


class TcpTransport:
    name: TransportName = "tcp"

    def __init__(
        self,
        sink: FrameSink,
        limits: TransportLimits | None = None,
        *,
        connection_id_base: int = 0,
    ) -> None:
        self._sink = sink
        self.limits = limits or TransportLimits()
        self._servers: list[asyncio.Server] = []
        self._addresses: list[tuple[str, int]] = []
        self._connections: dict[int, TcpConnection] = {}
        self._by_remote: dict[tuple[str, int], TcpConnection] = {}
        self._connecting: dict[tuple[str, int], _PendingConnect] = {}
        self._next_id = connection_id_base
        self._inbound = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = dict.fromkeys(
            (
                "tcp_accepted",
                "tcp_refused",
                "tcp_connected",
                "tcp_connect_failed",
                "tcp_closed_idle",
                "tcp_closed_slow",
                "tcp_closed_framing",
                "tcp_closed_write_overflow",
                "tcp_pings_answered",
                "tcp_pings_unanswered",
                "tcp_pongs",
                "tcp_reset_early",
                "tls_accepted",
                "ws_accepted",
                "ws_refused",
            ),
            0,
        )

    # -- life cycle --------------------------------------------------------------------
    async def start(
        self,
        sockets: list[socket.socket],
        tls_sockets: list[socket.socket] | None = None,
        certificates: TlsCertificates | None = None,
        *,
        ws_sockets: list[socket.socket] | None = None,
        wss_sockets: list[socket.socket] | None = None,
    ) -> None:
        """Serve TCP on ``sockets``, TLS on ``tls_sockets``, WebSocket on ``ws_sockets``
        and WebSocket over TLS on ``wss_sockets`` (the secure ones need
        ``certificates``)."""
        self._loop = asyncio.get_running_loop()
        listeners = [
            *((sock, False, False) for sock in sockets),
            *((sock, True, False) for sock in tls_sockets or []),
            *((sock, False, True) for sock in ws_sockets or []),
            *((sock, True, True) for sock in wss_sockets or []),
        ]
        if certificates is None and any(secure for _, secure, _ in listeners):
            raise ValueError("TLS and WSS listeners need a certificate")
        for sock, _, _ in listeners:  # all known before the first is accepted
            address = listen_address_of(sock)
            self._addresses.append((address.host, address.port))
        for sock, secure, websocket in listeners:
            await self._serve(sock, secure, websocket, certificates)
        self._schedule_sweep()

    async def _serve(
        self,
        sock: socket.socket,
        secure: bool,
        websocket: bool,
        certificates: TlsCertificates | None,
    ) -> None:
        assert self._loop is not None
        if not secure:
            server = await self._loop.create_server(
                lambda: TcpConnection(self, inbound=True, websocket=websocket), sock=sock
            )
        else:
            assert certificates is not None
            server = await self._loop.create_server(
                lambda: TcpConnection(self, inbound=True, secure=True, websocket=websocket),
                sock=sock,
                ssl=certificates.front,
                ssl_handshake_timeout=self.limits.read_timeout_s,
            )
        self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for pending in list(self._connecting.values()):
            pending.task.cancel()
        for connection in list(self._connections.values()):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._servers.clear()
        await asyncio.sleep(0)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(self._addresses)

    # -- the table ------------------------------------------------------------------------
    def connection(self, connection_id: int) -> TcpConnection | None:
        return self._connections.get(connection_id)

    def connection_to(self, host: str, port: int) -> TcpConnection | None:
        return self._by_remote.get((normalise_host(host), port))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _register(self, connection: TcpConnection) -> bool:
        if connection.inbound:
            if self._inbound >= self.limits.max_connections:
                self.stats["tcp_refused"] += 1
                return False
            self._inbound += 1
            self.stats["tcp_accepted"] += 1
        else:
            self.stats["tcp_connected"] += 1
        self._next_id += 1
        connection.id = self._next_id
        self._connections[connection.id] = connection
        self._by_remote[connection.remote] = connection  # the newest one is reused
        return True

    def _unregister(self, connection: TcpConnection) -> None:
        if self._connections.pop(connection.id, None) is None:
            return
        if connection.inbound:
            self._inbound -= 1
        if self._by_remote.get(connection.remote) is connection:
            del self._by_remote[connection.remote]
            for other in reversed(self._connections.values()):  # another one to that peer?
                if other.remote == connection.remote:
                    self._by_remote[other.remote] = other
                    break

    # -- sending --------------------------------------------------------------------------
    def send(self, data: bytes, destination: Destination) -> None:
        connection = None
        if destination.connection_id is not None:
            connection = self._connections.get(destination.connection_id)
        key = (normalise_host(destination.host), destination.port)
        if connection is None or not connection.usable:
            connection = self._by_remote.get(key)
            if connection is not None and connection.name != destination.transport:
                connection = None  # reused by address only in the same transport
        if connection is not None and connection.usable:
            connection.write(data)
            return
        if destination.transport != "tcp":
            kind = destination.transport.upper()
            raise TransportError(
                f"no open {kind} connection to {destination.host}:{destination.port}"
                f" ({kind} connections are accepted, never opened)"
            )
        pending = self._connecting.get(key)
        if pending is None:
            pending = self._connect(key)
        pending.add(data, destination)

    def _connect(self, key: tuple[str, int]) -> _PendingConnect:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        pending = _PendingConnect(self, key)
        pending.task = self._loop.create_task(self._open(pending))
        self._connecting[key] = pending
        return pending

    async def _open(self, pending: _PendingConnect) -> None:
        host, port = pending.key
        loop = asyncio.get_running_loop()
        local = self._local_for(host)
        try:
            async with asyncio.timeout(self.limits.connect_timeout_s):
                await loop.create_connection(
                    lambda: TcpConnection(self, inbound=False, pending=pending),
                    host,
                    port,
                    local_addr=local,
                )
        except (OSError, TimeoutError) as exc:
            self.stats["tcp_connect_failed"] += 1
            pending.fail(TransportError(f"TCP connect to {host}:{port} failed: {exc!r}"))
        finally:
            if self._connecting.get(pending.key) is pending:
                del self._connecting[pending.key]

    def _local_for(self, host: str) -> tuple[str, int] | None:
        """Connect from our listener's IP (not the wildcard) so the peer sees it."""
        family = family_of(host)
        for local_host, _ in self._addresses:
            if family_of(local_host) == family and not _is_wildcard(local_host):
                return (local_host, 0)
        return None

    async def connect(self, host: str, port: int) -> TcpConnection:
        """The open connection to (host, port), opening one if needed."""
        key = (normalise_host(host), port)
        connection = self._by_remote.get(key)
        if connection is not None:
            return connection
        pending = self._connecting.get(key) or self._connect(key)
        await asyncio.shield(pending.task)
        connection = self._by_remote.get(key)
        if connection is None:
            raise TransportError(f"TCP connect to {host}:{port} failed")
        return connection

    # -- timeouts -----------------------------------------------------------------------------
    def _schedule_sweep(self) -> None:
        limits = self.limits
        interval = max(0.05, min(1.0, limits.read_timeout_s / 4, limits.idle_timeout_s / 4))
        assert self._loop is not None
        self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        read_deadline = now - self.limits.read_timeout_s
        idle_deadline = now - self.limits.idle_timeout_s
        for connection in list(self._connections.values()):
            started = connection.partial_since
            if connection.closing_since is not None:
                if connection.closing_since < read_deadline:  # its peer stopped reading
                    connection.abort()
            elif started is not None and started < read_deadline:
                self.stats["tcp_closed_slow"] += 1
                connection.abort()
            elif connection.last_activity < idle_deadline:
                self.stats["tcp_closed_idle"] += 1
                connection.close()
        self._schedule_sweep()

    def counters(self) -> dict[str, int]:
        return {**self.stats, "tcp_open": len(self._connections)}


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class _PendingConnect:
    """Messages waiting for a connection being opened; flushed in connection order."""

    def __init__(self, owner: TcpTransport, key: tuple[str, int]) -> None:
        self.owner = owner
        self.key = key
        self.task: asyncio.Task[None]
        self.queue: list[tuple[bytes, Destination]] = []
        self.size = 0

    def add(self, data: bytes, destination: Destination) -> None:
        if self.size + len(data) > self.owner.limits.max_write_buffer:
            raise TransportError(f"TCP connect to {self.key[0]}:{self.key[1]}: queue full")
        self.queue.append((data, destination))
        self.size += len(data)

    def flush(self, connection: TcpConnection) -> None:
        queue, self.queue = self.queue, []
        for data, destination in queue:
            try:
                connection.write(data)
            except TransportError as exc:
                self.owner._sink.send_failed(destination, exc)

    def fail(self, error: Exception) -> None:
        queue, self.queue = self.queue, []
        for _, destination in queue:
            self.owner._sink.send_failed(destination, error)


class TcpConnection(asyncio.Protocol):
    """One TCP connection: framing in, bounded writes out, activity times for the sweep."""

    def __init__(
        self,
        owner: TcpTransport,
        *,
        inbound: bool,
        pending: _PendingConnect | None = None,
        secure: bool = False,
        websocket: bool = False,
    ) -> None:
        self._owner = owner
        self._pending = pending
        self.inbound = inbound
        self.secure = secure  # TLS: its peer says "tls" (or "wss")
        self.name: TransportName = _name_of(secure, websocket)
        # RFC 7118: WebSocket frames the messages; None: the SIP stream framer does
        self._websocket = WebSocketCodec(owner.limits.max_message_size) if websocket else None
        self.id = 0
        self.remote: tuple[str, int] = ("", 0)
        self.peer: Peer | None = None
        self.transport: asyncio.Transport | None = None
        self._framer = StreamFramer(owner.limits.max_message_size)
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self.closing_since: float | None = None
        self._pong_tokens = float(owner.limits.pong_burst)
        self._pong_refilled = self.last_activity
        # An accepted connection must bring its first message within the read timeout.
        self.partial_since: float | None = self.last_activity if inbound else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        remote = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if remote is None or local is None:  # reset before we got to it: nothing to serve
            self._owner.stats["tcp_reset_early"] += 1
            self.transport.abort()
            return
        self.remote = (normalise_host(remote[0]), remote[1])
        if not self._owner._register(self):
            self.transport.abort()
            return
        self.peer = Peer(self.name, self.remote[0], self.remote[1], local[0], local[1], self.id)
        if self.secure:
            self._owner.stats["tls_accepted"] += 1
        if self._pending is not None:
            self._pending.flush(self)
            self._pending = None

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or self.closing_since is not None:  # refused, or on its way out
            return
        self.last_activity = now = self._loop.time()
        if self._websocket is not None:
            self._websocket_received(data, peer, now)
            return
        try:
            items = self._framer.feed(data)
        except ParseError as exc:
            self._owner.stats["tcp_closed_framing"] += 1
            self._owner._sink.frame_rejected(exc, peer)
            self.close()
            return
        if items:
            try:
                self._deliver(items, peer, now)
            except Exception:  # asyncio would tear the connection down with a traceback
                log.exception("TCP data from %s:%s not handled", peer.host, peer.port)
                self.abort()
            self.partial_since = now if self._framer.pending else None
        elif self.partial_since is None:
            self.partial_since = now

    def _websocket_received(self, data: bytes, peer: Peer, now: float) -> None:
        codec = self._websocket
        assert codec is not None
        opened = codec.open
        items = codec.feed(data)
        reply = codec.outgoing()
        if reply and self.transport is not None:  # the handshake's answer, a Pong, a Close
            self.transport.write(reply)
        if codec.open and not opened:
            self._owner.stats["ws_accepted"] += 1
        if codec.refused is not None:
            self._owner.stats["ws_refused"] += 1
            log.info("WebSocket from %s:%s refused: %s", peer.host, peer.port, codec.refused)
        if items:
            try:
                self._deliver(items, peer, now)
            except Exception:  # as for TCP: never let asyncio tear it down with a traceback
                log.exception("WebSocket data from %s:%s not handled", peer.host, peer.port)
                self.abort()
                return
        if not (codec.pending or not codec.open):
            self.partial_since = None
        elif self.partial_since is None:  # kept while it lasts: a slow handshake is slow
            self.partial_since = now
        if codec.closed:
            self.close()

    def _deliver(self, items: list[StreamItem], peer: Peer, now: float) -> None:
        sink = self._owner._sink
        for item in items:
            if isinstance(item, bytes):
                sink.frame_received(item, peer)
            elif isinstance(item, KeepAlivePing):
                self._pong(now)
            else:
                self._owner.stats["tcp_pongs"] += 1

    def _pong(self, now: float) -> None:
        """Answer a ping while the budget lasts (a token bucket: RFC 5626 §4.4.1 has a
        UA ping every minute or two, so the default of a burst of 10 and one a second
        is never felt by one); a connection closing (reset by its peer while its pings
        were read) gets none, quietly."""
        stats = self._owner.stats
        limits = self._owner.limits
        tokens = self._pong_tokens + (now - self._pong_refilled) * limits.pongs_per_s
        self._pong_tokens = min(tokens, float(limits.pong_burst))
        self._pong_refilled = now
        if self._pong_tokens < 1.0:
            stats["tcp_pings_unanswered"] += 1
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._pong_tokens -= 1.0
        try:
            self.write(PONG)
        except TransportError:  # its peer does not read: dropped by write()
            return
        stats["tcp_pings_answered"] += 1

    def eof_received(self) -> bool | None:
        return None  # close our side too: SIP has no use for half-open connections

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._unregister(self)
        self.peer = None

    @property
    def usable(self) -> bool:
        """Open and not on its way out (a closing connection gets no new messages)."""
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise TransportError(f"TCP connection {self.id} is closed")
        if self._websocket is not None:
            data = self._framed(data)
        if transport.get_write_buffer_size() + len(data) > self._owner.limits.max_write_buffer:
            self._owner.stats["tcp_closed_write_overflow"] += 1
            transport.abort()
            raise TransportError(f"TCP connection {self.id}: peer does not read, dropped")
        transport.write(data)
        self.last_activity = self._loop.time()

    def _framed(self, data: bytes) -> bytes:
        codec = self._websocket
        assert codec is not None
        if not codec.open:
            raise TransportError(f"WebSocket connection {self.id} is not open")
        return codec.frame(data)

    def close(self) -> None:
        """Close after what is queued has been written (the sweep aborts it if that
        takes longer than the read timeout); a WebSocket says goodbye with a Close."""
        if self.transport is not None and self.closing_since is None:
            self.closing_since = self._loop.time()
            if self._websocket is not None and self._websocket.open:
                self._websocket.close()
                self.transport.write(self._websocket.outgoing())
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()


def _name_of(secure: bool, websocket: bool) -> TransportName:
    if websocket:
        return "wss" if secure else "ws"
    return "tls" if secure else "tcp"
