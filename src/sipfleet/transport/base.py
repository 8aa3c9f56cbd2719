"""Types every transport shares: where a message came from, where one goes, limits, errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from sipfleet.config.model import SipSection
    from sipfleet.sip import ParseError

TransportName = Literal["udp", "tcp", "tls", "ws", "wss"]
# connection-oriented transports that are only accepted, never opened (clients behind
# NAT or in a browser are reached over their own connection or not at all)
ACCEPTED_ONLY: tuple[TransportName, ...] = ("tls", "ws", "wss")


class Destination(NamedTuple):
    """Where to send. ``host`` is an IP literal (resolving names is the caller's job).

    TCP: ``connection_id`` names the connection to use while it is open; otherwise a
    connection to (host, port) is reused or opened. UDP: ``local`` picks the socket to
    send from (the one a request came in on, RFC 3581 §4); None means the first socket
    of the right address family.
    """

    transport: TransportName
    host: str
    port: int
    connection_id: int | None = None
    local: tuple[str, int] | None = None


class Peer(NamedTuple):
    """Where a message came from: the remote address, the local socket, the connection."""

    transport: TransportName
    host: str
    port: int
    local_host: str
    local_port: int
    connection_id: int | None = None  # TCP, TLS, WS and WSS only

    @property
    def reply_to(self) -> Destination:
        """Back to the source: same connection (TCP), same local socket (UDP)."""
        return Destination(
            self.transport,
            self.host,
            self.port,
            self.connection_id,
            (self.local_host, self.local_port),
        )


@mypyc_attr(native_class=False)  # compiled (sipfleet.native): OSError can't be a native base
class TransportError(OSError):
    """A message could not be sent (no socket for it, connection gone, buffer full)."""


@mypyc_attr(native_class=False)  # as TransportError
class MessageTooLarge(TransportError):
    """A datagram larger than the network takes (EMSGSIZE). RFC 3261 §18.1.1 would send
    a request over TCP instead; a stateless hop has no transaction to do that with and
    answers 513 Message Too Large."""


class FrameSink(Protocol):
    """What a transport delivers to: whole messages and the framing errors of streams."""

    def frame_received(self, data: bytes, peer: Peer) -> None:
        """One datagram (UDP) or one Content-Length framed message (TCP)."""

    def frame_rejected(self, error: ParseError, peer: Peer) -> None:
        """A stream could not be framed; the connection closes right after this call,
        so an answer sent from here (to ``peer.reply_to``) still goes out first."""

    def send_failed(self, destination: Destination, error: Exception) -> None:
        """A send accepted earlier failed later (a TCP connect that did not succeed)."""


class Transport(Protocol):
    name: TransportName

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The local (host, port) of each listening socket, in listen order."""

    def send(self, data: bytes, destination: Destination) -> None:
        """Queue ``data``; raises TransportError when it cannot be sent at all."""

    def counters(self) -> dict[str, int]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Bounds on what one peer can make a process hold (defaults follow SipSection)."""

    max_message_size: int = 65535  # larger: 513 (TCP: then close)
    max_connections: int = 10000  # accepted TCP connections; more are closed at once
    idle_timeout_s: float = 600.0  # a TCP connection without traffic is closed
    read_timeout_s: float = 30.0  # a started TCP message must be complete by then
    connect_timeout_s: float = 5.0  # outbound TCP connect
    max_write_buffer: int = 1 << 20  # bytes queued for one peer before it counts as dead
    socket_buffer: int = 4 << 20  # SO_RCVBUF / SO_SNDBUF asked for (the kernel may cap it)
    # CRLF pongs one TCP connection gets (RFC 5626 §4.4.1: a UA pings every minute or
    # two): a bucket of ``pong_burst``, refilled at ``pongs_per_s``; pings past it are
    # not answered.
    pong_burst: int = 10
    pongs_per_s: float = 1.0

    @classmethod
    def from_config(cls, sip: SipSection) -> TransportLimits:
        return cls(
            max_message_size=sip.max_message_size,
            max_connections=sip.max_tcp_connections,
            idle_timeout_s=float(sip.tcp_idle_timeout_s),
            read_timeout_s=sip.tcp_read_timeout_s,
        )
