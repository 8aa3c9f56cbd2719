"""The SIP endpoint: listeners in, parsed messages to a handler, bytes out.

It parses and nothing more (roles call ``validate_request`` themselves). A request the
parser rejects is answered with the parser's status and reason (400 naming the defect,
505, 513, ...) to where it came from; a broken response, or bytes that are not SIP, are
dropped and counted. A ParseError a handler lets escape while handling a request is
answered the same way, so a role can simply call ``validate_request``. With several
workers of a stateful role, ``steering`` first decides whether a message is this
worker's to handle and whether a TCP connection is its to write (``transport/inboxes.py``).

    endpoint = SipEndpoint([parse_listen("udp:127.0.0.1:5060")], handler)
    async with endpoint:
        ...  # handler.on_request(request, peer) / on_response(response, peer) run here
        endpoint.send_response(make_response(request, 200), peer.reply_to)
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import Final, Protocol

from mypy_extensions import mypyc_attr

from sipfleet.config.listen import ListenAddress, Transport
from sipfleet.logcontext import CALL_ID
from sipfleet.sip import Message, ParseError, Request, Response, parse_message
from sipfleet.sip.builders import make_response
from sipfleet.stats import RELAY_BUCKETS, Histogram
from sipfleet.transport.base import (
    Destination,
    Peer,
    TransportError,
    TransportLimits,
    TransportName,
)
from sipfleet.transport.sockets import bind_all, family_of, listen_address_of
from sipfleet.transport.tcp import TcpTransport
from sipfleet.transport.tls import TlsCertificates
from sipfleet.transport.udp import UdpTransport

log: Final = logging.getLogger(__name__)

# Connection ids of worker n start at n << 32, so an id names its worker too.
CONNECTION_IDS_PER_WORKER: Final = 1 << 32
# Requests are counted by method for these; any other method counts as "other", so that
# no sender can make up label values (the metrics).
COUNTED_METHODS: Final = (
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "REFER",
    "MESSAGE",
    "INFO",
    "PRACK",
    "UPDATE",
)
# One message in this many is timed from its arrival to the handler's return: two clock
# reads and a bisect on every message would cost the relay about 1 % (docs/benchmarks.md).
TIMED_EVERY: Final = 16


class SipHandler(Protocol):
    """What a role implements. Called synchronously from the receive path: start a task
    for anything that waits (a database query), never block."""

    def on_request(self, request: Request, peer: Peer) -> None: ...

    def on_response(self, response: Response, peer: Peer) -> None: ...


class Shortcut(Protocol):
    """A role's way to handle the usual datagram from its bytes, before it is parsed (the
    proxy's 2xx ACK, core/proxy/fastack.py; the LB has its own, in its endpoint)."""

    def relay(self, data: bytes, peer: Peer) -> bool:
        """True when ``data`` (a UDP datagram this worker owns) was handled; False: it
        was declined, nothing changed or counted, and it is parsed as usual."""
        ...


class Steering(Protocol):
    """Which worker handles what, when several share the addresses of a stateful role
    (``transport/inboxes.py``); None with one worker, at the cost of one test."""

    def elsewhere(self, data: bytes, peer: Peer) -> bool:
        """True when another worker owns the message and it was handed there."""
        ...

    def sent_elsewhere(self, data: bytes, destination: Destination) -> bool:
        """True when another worker holds the TCP connection and the bytes went to it."""
        ...


class _NoHandler:
    def on_request(self, request: Request, peer: Peer) -> None:
        raise RuntimeError("SipEndpoint has no handler")

    def on_response(self, response: Response, peer: Peer) -> None:
        raise RuntimeError("SipEndpoint has no handler")


@dataclass(slots=True)
class EndpointStats:
    requests_received: int = 0
    responses_received: int = 0
    messages_sent: int = 0
    requests_rejected: int = 0  # answered with the parser's status
    requests_dropped: int = 0  # broken ACKs: never answered
    responses_dropped: int = 0  # broken responses
    garbage_dropped: int = 0  # not SIP at all
    send_errors: int = 0
    handler_errors: int = 0  # exceptions escaping the handler (a bug: logged)


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (sipfleet.native); the LB's extends it
class SipEndpoint:
    def __init__(
        self,
        listen: Sequence[ListenAddress],
        handler: SipHandler | None = None,
        *,
        limits: TransportLimits | None = None,
        worker_index: int = 0,
        sockets: Sequence[socket.socket] | None = None,
        on_send_error: Callable[[Destination, Exception], None] | None = None,
        certificates: TlsCertificates | None = None,
    ) -> None:
        """``sockets``: already bound sockets (one worker's share from
        ``bind_for_workers``, in the order of ``listen``) used instead of binding
        ``listen``; ``certificates``: what the ``tls:`` listeners serve."""
        self.handler: SipHandler = handler or _NoHandler()
        self.limits = limits or TransportLimits()
        self.stats = EndpointStats()
        self.on_send_error = on_send_error
        self.steering: Steering | None = None
        self.shortcut: Shortcut | None = None  # see Shortcut; set by the role
        self._listen = list(listen)
        self._sockets = list(sockets) if sockets is not None else None
        self.certificates = certificates
        self._max_size = self.limits.max_message_size
        self.udp = UdpTransport(self)
        self.tcp = TcpTransport(
            self, self.limits, connection_id_base=worker_index * CONNECTION_IDS_PER_WORKER
        )
        self._transports: dict[str, UdpTransport | TcpTransport] = {
            "udp": self.udp,
            "tcp": self.tcp,
            "tls": self.tcp,  # one connection table for all: TLS is TCP underneath,
            "ws": self.tcp,  # and so are WebSocket (RFC 7118)
            "wss": self.tcp,  # and WebSocket over TLS
        }
        self.addresses: list[ListenAddress] = []
        # For the metrics (sipfleet.mgmt.metrics): plain counts, read once a second.
        self.requests_by_method: dict[str, int] = dict.fromkeys((*COUNTED_METHODS, "other"), 0)
        # Log lines written while a message is handled name its Call-ID (logcontext): the
        # registrar's and the proxy's are about calls; the LB turns it off (a header
        # lookup per message on its path, and its lines are about pools and flows).
        self.names_calls = True
        self.responses_received_by_class = [0] * 10  # index: status // 100
        self.responses_sent_by_class = [0] * 10
        self.handling = Histogram(RELAY_BUCKETS)  # seconds, one message in TIMED_EVERY
        self._until_timed = TIMED_EVERY

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> None:
        if isinstance(self.handler, _NoHandler):
            raise RuntimeError("SipEndpoint.start: set a handler first")
        sockets = self._sockets if self._sockets is not None else bind_all(self._listen)
        named = _stream_transports(self._listen, sockets)
        self.addresses = []
        for sock in sockets:
            address = listen_address_of(sock)
            if sock in named:
                address = ListenAddress(named[sock], address.host, address.port)
            self.addresses.append(address)
        streams: dict[str, list[socket.socket]] = {"tcp": [], "tls": [], "ws": [], "wss": []}
        for sock in sockets:
            if sock.type == socket.SOCK_STREAM:
                streams[named.get(sock, "tcp")].append(sock)
        await self.udp.start([s for s in sockets if s.type == socket.SOCK_DGRAM])
        await self.tcp.start(
            streams["tcp"],
            streams["tls"],
            self.certificates,
            ws_sockets=streams["ws"],
            wss_sockets=streams["wss"],
        )
        log.info("listening on %s", ", ".join(str(a) for a in self.addresses))

    async def close(self) -> None:
        await self.udp.close()
        await self.tcp.close()

    async def __aenter__(self) -> SipEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- addresses ------------------------------------------------------------------------
    def local_address(
        self, transport: TransportName, remote_host: str | None = None
    ) -> tuple[str, int]:
        """Our listening (host, port) for ``transport``; with ``remote_host``, one of the
        same address family. For Via sent-by and Record-Route."""
        family = family_of(remote_host) if remote_host is not None else None
        for address in self.addresses:
            if address.transport == transport and (
                family is None or family_of(address.host) == family
            ):
                return address.host, address.port
        raise TransportError(f"no {transport} listener for {remote_host or 'any address'}")

    def sent_by(self, transport: TransportName, remote_host: str | None = None) -> str:
        """``host:port`` as written in a Via or URI (IPv6 in brackets)."""
        host, port = self.local_address(transport, remote_host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def has_connection(self, connection_id: int) -> bool:
        return self.tcp.connection(connection_id) is not None

    # -- sending --------------------------------------------------------------------------
    def send_request(self, request: Request, destination: Destination) -> None:
        self.send_bytes(request.serialize(), destination)

    def send_response(self, response: Response, destination: Destination) -> None:
        self.send_bytes(response.serialize(), destination)

    def send_bytes(self, data: bytes, destination: Destination) -> None:
        """Raises TransportError when it cannot be sent at all; a later failure (a TCP
        connect that fails) is counted and passed to ``on_send_error``."""
        transport = self._transports.get(destination.transport)
        if transport is None:
            raise TransportError(f"unsupported transport {destination.transport!r}")
        if destination.connection_id is not None:  # TCP: maybe another worker's connection
            steering = self.steering
            if steering is not None and steering.sent_elsewhere(data, destination):
                self.stats.messages_sent += 1
                return
        try:
            transport.send(data, destination)
        except TransportError:
            self.stats.send_errors += 1
            raise
        self.stats.messages_sent += 1
        # b"SIP/2.0 NXX": a response (no method has a "/"); N is its class.
        if len(data) > 8 and data[3] == 47 and data[0] == 83:
            status_class = data[8] - 48
            if 0 <= status_class <= 9:
                self.responses_sent_by_class[status_class] += 1

    def reply(self, request: Message, status: int, reason: str | None, peer: Peer) -> None:
        """Answer ``request`` to where it came from; a failure is only counted."""
        try:
            response = make_response(request, status, reason)
            self.send_bytes(response.serialize(), peer.reply_to)
        except TransportError as exc:
            log.debug("answer %s to %s:%s not sent: %s", status, peer.host, peer.port, exc)

    # -- receiving (the transports' FrameSink) -----------------------------------------------
    def frame_received(self, data: bytes, peer: Peer) -> None:
        self._until_timed -= 1
        if self._until_timed:
            self._frame_received(data, peer)
            return
        self._until_timed = TIMED_EVERY
        started = perf_counter()
        self._frame_received(data, peer)
        self.handling.observe(perf_counter() - started)

    def _frame_received(self, data: bytes, peer: Peer) -> None:
        steering = self.steering
        if steering is not None and steering.elsewhere(data, peer):
            return  # another worker owns it: handed over unparsed
        shortcut = self.shortcut
        if shortcut is not None and peer.transport == "udp" and shortcut.relay(data, peer):
            return
        try:
            # TCP and TLS cut messages by Content-Length; UDP and WebSocket (RFC 7118
            # §5.1: one SIP message per WebSocket message) by their own framing
            message = parse_message(data, self._max_size, peer[0] == "tcp" or peer[0] == "tls")
        except ParseError as exc:
            self._rejected(exc, peer, data)
            return
        if self.names_calls:  # the handler's log lines, and its tasks', name the call
            token = CALL_ID.set(message.header("call-id"))
            try:
                self._deliver(message, peer)
            finally:
                CALL_ID.reset(token)
        else:
            self._deliver(message, peer)

    def _deliver(self, message: Message, peer: Peer) -> None:
        try:
            if isinstance(message, Request):
                count_request(self, message.method)
                self.handler.on_request(message, peer)
            else:
                self.stats.responses_received += 1
                response: Response = message  # type: ignore[assignment]
                self.responses_received_by_class[response.status // 100] += 1
                self.handler.on_response(response, peer)
        except ParseError as exc:
            self._handler_parse_error(exc, message, peer)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("handler failed on %r from %s:%s", message, peer.host, peer.port)

    def _handler_parse_error(self, error: ParseError, message: Message, peer: Peer) -> None:
        """A request is answered like a parser error; a response is dropped."""
        if isinstance(message, Request):
            if error.message is None:
                error.message = message
            self._rejected(error, peer, b"")
        else:
            self.stats.responses_dropped += 1
            log.debug("response from %s:%s dropped: %s", peer.host, peer.port, error)

    def frame_rejected(self, error: ParseError, peer: Peer) -> None:
        self._rejected(error, peer, b"")

    def _rejected(self, error: ParseError, peer: Peer, data: bytes) -> None:
        """Answer what can be answered; count the rest."""
        message = error.message
        if isinstance(message, Request):
            if message.method == "ACK":  # an ACK is never answered (§17.2.3)
                self.stats.requests_dropped += 1
                return
            self.stats.requests_rejected += 1
            log.debug("%s from %s:%s: %s", message.method, peer.host, peer.port, error)
            self.reply(message, error.status, error.reason, peer)
        elif isinstance(message, Response) or data.startswith(b"SIP/"):
            self.stats.responses_dropped += 1
            log.debug("broken response from %s:%s: %s", peer.host, peer.port, error)
        else:
            self.stats.garbage_dropped += 1
            log.debug("not SIP from %s:%s: %s", peer.host, peer.port, error)

    def send_failed(self, destination: Destination, error: Exception) -> None:
        self.stats.send_errors += 1
        log.debug("send to %s failed: %s", destination, error)
        if self.on_send_error is not None:
            self.on_send_error(destination, error)

    def counters(self) -> dict[str, int]:
        return {**asdict(self.stats), **self.udp.counters(), **self.tcp.counters()}


def count_request(endpoint: SipEndpoint, method: str) -> None:
    """One request received, counted by method for the metrics (a function, not a method:
    compiled code calls it directly, where a method of a class that interpreted code may
    extend is looked up by name)."""
    endpoint.stats.requests_received += 1
    by_method = endpoint.requests_by_method
    counted = by_method.get(method)
    if counted is None:
        by_method["other"] += 1
    else:
        by_method[method] = counted + 1


def _stream_transports(
    listen: Sequence[ListenAddress], sockets: Sequence[socket.socket]
) -> dict[socket.socket, Transport]:
    """The transport of each ``tls:``, ``ws:`` and ``wss:`` socket (one bound for
    ``tcp:`` says tcp itself): sockets come in the order of ``listen`` (a worker's share
    may have more after them, such as the LB's control socket)."""
    return {
        sock: address.transport
        for address, sock in zip(listen, sockets, strict=False)
        if address.transport in ("tls", "ws", "wss") and sock.type == socket.SOCK_STREAM
    }
