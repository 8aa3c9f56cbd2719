"""UDP listeners: one asyncio datagram endpoint per bound socket.

Keep-alives never reach the SIP layer: a datagram of only CRLF/whitespace is a UA's
NAT keep-alive and is dropped (RFC 5626 defines no answer for it on UDP), a STUN
Binding request is answered (RFC 5626 §8.2). Everything else goes to the sink, which
parses it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from asyncio.protocols import DatagramProtocol
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from mypy_extensions import mypyc_attr

from sipfleet.sip.parser import is_keepalive
from sipfleet.transport import stun
from sipfleet.transport.base import (
    Destination,
    FrameSink,
    Peer,
    TransportError,
    TransportLimits,
    TransportName,
)
from sipfleet.transport.sockets import listen_address_of

log = logging.getLogger(__name__)
_new_tuple = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


class UdpTransport:
    name: TransportName = "udp"

    def __init__(self, sink: FrameSink, limits: TransportLimits | None = None) -> None:
        self._sink = sink
        self._max_buffered = (limits or TransportLimits()).max_write_buffer
        self._listeners: list[_UdpListener] = []
        self._by_local: dict[tuple[str, int], _UdpListener] = {}
        self._by_family: dict[socket.AddressFamily, _UdpListener] = {}
        self.keepalives = 0
        self.stun_answered = 0
        self.send_dropped = 0
        self.socket_errors = 0

    async def start(self, sockets: list[socket.socket]) -> None:
        # Every listener is known before any reads: queued datagrams are delivered as
        # soon as the first endpoint opens, and their answers may leave by another one.
        listeners = []
        for sock in sockets:
            address = listen_address_of(sock)
            listener = _UdpListener(self, self._sink.frame_received, address.host, address.port)
            listeners.append(listener)
            self._listeners.append(listener)
            self._by_local[(address.host, address.port)] = listener
            self._by_family.setdefault(sock.family, listener)
        loop = asyncio.get_running_loop()
        for listener, sock in zip(listeners, sockets, strict=True):
            await loop.create_datagram_endpoint(partial(_same, listener), sock=sock)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(listener.local_host, listener.local_port) for listener in self._listeners]

    def send(self, data: bytes, destination: Destination) -> None:
        _, host, port, _, local = destination
        if host[:1] == "[":
            host = host[1:-1]
        listener = self._by_local.get(local) if local is not None else None
        if listener is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = self._by_family.get(family)
            if listener is None:
                raise TransportError(f"no UDP socket for {family.name} destination {host}")
        transport = listener.transport
        if transport is None or transport.is_closing():
            raise TransportError("UDP socket closed")
        if transport.get_write_buffer_size() > self._max_buffered:  # type: ignore[attr-defined]
            self.send_dropped += 1  # the kernel buffer is full and so is ours: lose it
            return
        try:
            transport.sendto(data, (host, port))
        except (OSError, ValueError, TypeError) as exc:
            raise TransportError(f"UDP send to {host}:{port}: {exc}") from exc

    def odd_datagram(self, data: bytes, addr: Any, listener: _UdpListener) -> None:
        """Not a SIP start line: keep-alive, STUN, or (leading CRLFs, garbage) for the
        parser to accept or reject."""
        if is_keepalive(data):
            self.keepalives += 1
            return
        if stun.looks_like_stun(data):
            answer = stun.binding_response(data, addr[0], addr[1])
            if answer is not None and listener.transport is not None:
                self.stun_answered += 1
                listener.transport.sendto(answer, addr)
                return
        peer = _new_tuple(
            Peer, ("udp", addr[0], addr[1], listener.local_host, listener.local_port, None)
        )
        self._sink.frame_received(data, peer)

    def counters(self) -> dict[str, int]:
        return {
            "udp_keepalives": self.keepalives,
            "udp_stun_answered": self.stun_answered,
            "udp_send_dropped": self.send_dropped,
            "udp_socket_errors": self.socket_errors,
        }

    async def close(self) -> None:
        for listener in self._listeners:
            if listener.transport is not None:
                listener.transport.close()
        self._listeners.clear()
        self._by_local.clear()
        self._by_family.clear()
        await asyncio.sleep(0)  # let the loop run the close callbacks


def _same(listener: _UdpListener) -> _UdpListener:
    return listener


# A Python class in the compiled module (sipfleet.native): asyncio calls it as a protocol.
# Its base is imported from asyncio.protocols: named as asyncio.DatagramProtocol, mypyc
# 2.4 emits C that uses asyncio.protocols without declaring it, and gcc fails.
@mypyc_attr(native_class=False)
class _UdpListener(DatagramProtocol):
    __slots__ = ("_deliver", "_owner", "local_host", "local_port", "transport")

    def __init__(
        self,
        owner: UdpTransport,
        deliver: Callable[[bytes, Peer], None],
        local_host: str,
        local_port: int,
    ) -> None:
        self._owner = owner
        self._deliver = deliver
        self.local_host = local_host
        self.local_port = local_port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            if data and data[0] > 0x40:  # a letter: a request method or "SIP/2.0"
                peer = _new_tuple(
                    Peer, ("udp", addr[0], addr[1], self.local_host, self.local_port, None)
                )
                self._deliver(data, peer)
            else:
                self._owner.odd_datagram(data, addr, self)
        except Exception:  # asyncio would close the socket: one bad datagram must not
            log.exception("UDP datagram from %s:%s not handled", addr[0], addr[1])

    def error_received(self, exc: Exception) -> None:
        self._owner.socket_errors += 1  # ICMP errors of earlier sends: nothing to redo
