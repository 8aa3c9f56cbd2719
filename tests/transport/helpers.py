"""Real-socket helpers for transport and endpoint tests: a recording handler, a UDP
client, and SIP messages to send."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sipfleet.config.listen import ListenAddress, parse_listen
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.sip import Request, Response, parse_message
from sipfleet.transport import Peer, TransportLimits

TIMEOUT = 2.0


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class Recorder:
    """A SipHandler that keeps what it gets, in order."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[Request, Peer]] = asyncio.Queue()
        self.responses: asyncio.Queue[tuple[Response, Peer]] = asyncio.Queue()

    def on_request(self, request: Request, peer: Peer) -> None:
        self.requests.put_nowait((request, peer))

    def on_response(self, response: Response, peer: Peer) -> None:
        self.responses.put_nowait((response, peer))

    async def request(self) -> tuple[Request, Peer]:
        return await asyncio.wait_for(self.requests.get(), TIMEOUT)

    async def response(self) -> tuple[Response, Peer]:
        return await asyncio.wait_for(self.responses.get(), TIMEOUT)


@asynccontextmanager
async def running_endpoint(
    *listen: str, limits: TransportLimits | None = None, handler: object | None = None
) -> AsyncIterator[tuple[SipEndpoint, Recorder]]:
    recorder = Recorder()
    addresses: list[ListenAddress] = [parse_listen(text) for text in listen]
    endpoint = SipEndpoint(addresses, handler or recorder, limits=limits)  # type: ignore[arg-type]
    async with endpoint:
        yield endpoint, recorder


def address_of(endpoint: SipEndpoint, transport: str) -> tuple[str, int]:
    return next((a.host, a.port) for a in endpoint.addresses if a.transport == transport)


class UdpClient:
    """A UA's UDP socket, read without blocking the loop the endpoint runs on."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        self.sock.sendto(data, address)

    async def recv(self, timeout: float = TIMEOUT) -> tuple[bytes, tuple[str, int]]:
        try:  # something already waiting
            data, address = self.sock.recvfrom(65536)
            return data, (address[0], address[1])
        except BlockingIOError:
            pass
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.sock, lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, timeout)
        finally:
            loop.remove_reader(self.sock)
        data, address = self.sock.recvfrom(65536)  # (uvloop has no sock_recvfrom)
        return data, (address[0], address[1])

    async def recv_message(self) -> Request | Response:
        data, _ = await self.recv()
        return parse_message(data)  # type: ignore[return-value]

    async def nothing(self, wait: float = 0.3) -> None:
        """Assert that nothing arrives within ``wait`` seconds."""
        try:
            data, _ = await self.recv(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected datagram: {data[:80]!r}")

    def close(self) -> None:
        self.sock.close()


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def options(
    via: str,
    *,
    branch: str = "z9hG4bK-test-1",
    max_forwards: int | None = 70,
    call_id: str = "call-1@test",
    uri: str = "sip:echo@example.com",
    extra: str = "",
    method: str = "OPTIONS",
    body: bytes = b"",
    transport: str = "UDP",
) -> bytes:
    """A request whose top Via sent-by is ``via`` (``host:port`` plus parameters)."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via};branch={branch}",
        *([f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []),
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:echo@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        *([extra] if extra else []),
        f"Content-Length: {len(body)}",
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def answer(request: bytes, status: int = 200, reason: str = "OK") -> bytes:
    """What a UAS sends back: the request's Vias (joined on one line, as sipp does),
    From, To with a tag, Call-ID, CSeq."""
    message = parse_message(request)
    vias = ", ".join(message.header_values("via"))
    lines = [
        f"SIP/2.0 {status} {reason}",
        f"Via: {vias}",
        f"From: {message.header('from')}",
        f"To: {message.header('to')};tag=b2",
        f"Call-ID: {message.call_id}",
        f"CSeq: {message.header('cseq')}",
        "Content-Length: 0",
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n"
