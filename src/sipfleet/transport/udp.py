"""UDP listeners: one asyncio datagram endpoint per bound socket.

Keep-alives never reach the SIP layer: a datagram of only CRLF/whitespace is a UA's
NAT keep-alive and is dropped (RFC 5626 defines no answer for it on UDP), a STUN
Binding request is answered (RFC 5626 §8.2). Everything else goes to the sink, which
parses it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from asyncio.protocols import DatagramProtocol
from collections.abc import Callable
from functools import partial
from typing import Any, Final, cast

from mypy_extensions import mypyc_attr

from sipfleet.sip.memo import Memo
from sipfleet.sip.parser import is_keepalive
from sipfleet.transport import stun
from sipfleet.transport.base import (
    Destination,
    FrameSink,
    MessageTooLarge,
    Peer,
    TransportError,
    TransportName,
)
from sipfleet.transport.sockets import is_ip, listen_address_of

log: Final = logging.getLogger(__name__)
_new_tuple: Final = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path
MAX_PEERS: Final = 4096  # source addresses whose Peer is kept (bounded: sip/memo.py)


class UdpTransport:
    name: TransportName = "udp"

    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink
        self._sockets: list[_UdpSocket] = []
        self._listeners: list[_UdpListener] = []  # the protocols asyncio calls
        self._by_local: dict[tuple[str, int], _UdpSocket] = {}
        self._ipv4: _UdpSocket | None = None  # the first socket of each family
        self._ipv6: _UdpSocket | None = None
        self.keepalives = 0
        self.stun_answered = 0
        self.send_dropped = 0
        self.socket_errors = 0

    async def start(self, sockets: list[socket.socket]) -> None:
        # Every socket is known before any reads: queued datagrams are delivered as soon
        # as the first endpoint opens, and their answers may leave by another one.
        opened = []
        for sock in sockets:
            address = listen_address_of(sock)
            udp_socket = _UdpSocket(address.host, address.port, self._sink.frame_received, sock)
            opened.append(udp_socket)
            self._sockets.append(udp_socket)
            self._by_local[(address.host, address.port)] = udp_socket
            if sock.family == socket.AF_INET6:
                self._ipv6 = self._ipv6 or udp_socket
            else:
                self._ipv4 = self._ipv4 or udp_socket
        loop = asyncio.get_running_loop()
        for udp_socket, sock in zip(opened, sockets, strict=True):
            listener = _UdpListener(self, udp_socket)
            self._listeners.append(listener)
            await loop.create_datagram_endpoint(partial(_same, listener), sock=sock)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(s.local_host, s.local_port) for s in self._sockets]

    def send(self, data: bytes, destination: Destination) -> None:
        """Straight to the socket, not through the asyncio transport: nothing is queued
        in Python. A datagram the kernel has no room for is lost and counted, as the
        network would lose it (SIP over UDP retransmits)."""
        _, host, port, _, local = destination
        if host[:1] == "[":
            host = host[1:-1]
        udp_socket = self._by_local.get(local) if local is not None else None
        if udp_socket is None:
            udp_socket = self._ipv6 if ":" in host else self._ipv4
            if udp_socket is None:
                family = "IPv6" if ":" in host else "IPv4"
                raise TransportError(f"no UDP socket for {family} destination {host}")
        sock = udp_socket.sock
        if sock is None:
            raise TransportError("UDP socket closed")
        if not is_ip(host):  # the socket would resolve a name, and block the loop
            raise TransportError(f"UDP send to {host}: not an IP address")
        try:
            sock.sendto(data, (host, port))
        except BlockingIOError:
            self.send_dropped += 1
        except (OSError, ValueError, TypeError, OverflowError) as exc:
            raise _send_error(exc, host, port, len(data)) from exc

    def odd_datagram(self, data: bytes, addr: Any, udp_socket: _UdpSocket) -> None:
        """Not a SIP start line: keep-alive, STUN, or (leading CRLFs, garbage) for the
        parser to accept or reject."""
        if is_keepalive(data):
            self.keepalives += 1
            return
        if stun.looks_like_stun(data):
            answer = stun.binding_response(data, addr[0], addr[1])
            if answer is not None and udp_socket.transport is not None:
                self.stun_answered += 1
                udp_socket.transport.sendto(answer, addr)
                return
        udp_socket.received(data, addr)

    def counters(self) -> dict[str, int]:
        return {
            "udp_keepalives": self.keepalives,
            "udp_stun_answered": self.stun_answered,
            "udp_send_dropped": self.send_dropped,
            "udp_socket_errors": self.socket_errors,
        }

    async def close(self) -> None:
        for udp_socket in self._sockets:
            udp_socket.sock = None  # the transport closes it
            if udp_socket.transport is not None:
                udp_socket.transport.close()
                udp_socket.transport = None
        self._sockets.clear()
        self._listeners.clear()
        self._by_local.clear()
        self._ipv4 = self._ipv6 = None
        await asyncio.sleep(0)  # let the loop run the close callbacks


def _send_error(exc: Exception, host: str, port: int, size: int) -> TransportError:
    """What a refused ``sendto`` means to the caller: a datagram too large for the
    network (EMSGSIZE) is told apart, the one error a sender can do something about."""
    if isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE:
        return MessageTooLarge(f"UDP send to {host}:{port}: {size} bytes: {exc}")
    return TransportError(f"UDP send to {host}:{port}: {exc}")


def _same(listener: _UdpListener) -> _UdpListener:
    return listener


class _UdpSocket:
    """One bound socket as the send and receive paths see it. A compiled class: its
    fields are read without a lookup for every datagram (the listener below is a Python
    class, whose attributes cost a dictionary lookup each)."""

    __slots__ = ("deliver", "local_host", "local_port", "peers", "sock", "transport")

    def __init__(
        self,
        local_host: str,
        local_port: int,
        deliver: Callable[[bytes, Peer], None],
        sock: socket.socket,
    ) -> None:
        self.local_host = local_host
        self.local_port = local_port
        self.deliver = deliver
        self.sock: socket.socket | None = sock  # None once closed
        self.transport: asyncio.DatagramTransport | None = None  # reads; closes the socket
        # the source address (as the loop gives it) -> its Peer: a few sources send most
        # datagrams, and one dict lookup costs less than making the Peer (two objects);
        # its host is then one string whose hash is kept, for the lookups made with it
        self.peers: Final = Memo[Any, Peer](MAX_PEERS)

    def received(self, data: bytes, addr: Any) -> None:
        peer = self.peers.table.get(addr)
        if peer is None:
            peer = self.peers.put(
                addr,
                _new_tuple(Peer, ("udp", addr[0], addr[1], self.local_host, self.local_port, None)),
            )
        self.deliver(data, peer)


# A Python class in the compiled module (sipfleet.native): asyncio calls it as a protocol.
# Its base is imported from asyncio.protocols: named as asyncio.DatagramProtocol, mypyc
# 2.4 emits C that uses asyncio.protocols without declaring it, and gcc fails.
@mypyc_attr(native_class=False)
class _UdpListener(DatagramProtocol):
    __slots__ = ("_owner", "socket")

    def __init__(self, owner: UdpTransport, udp_socket: _UdpSocket) -> None:
        self._owner = owner
        self.socket = udp_socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.socket.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.socket.sock = None  # closed by the transport
        self.socket.transport = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            if data and data[0] > 0x40:  # a letter: a request method or "SIP/2.0"
                self.socket.received(data, addr)
            else:
                self._owner.odd_datagram(data, addr, self.socket)
        except Exception:  # asyncio would close the socket: one bad datagram must not
            log.exception("UDP datagram from %s:%s not handled", addr[0], addr[1])

    def error_received(self, exc: Exception) -> None:
        self._owner.socket_errors += 1  # ICMP errors of earlier sends: nothing to redo
