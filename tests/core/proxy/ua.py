"""A scripted SIP user agent over a real UDP socket, for the proxy engine's tests.

It sends what the test writes and queues what arrives, parsed; ``expect`` waits (with a
deadline) for the next message that matches. Nothing is answered automatically.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from sipfleet.sip import Message, Request, Response, parse_message
from sipfleet.sip.builders import make_response

_counter = itertools.count(1)


class UA(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.port = 0

    @classmethod
    async def start(cls, name: str) -> UA:
        loop = asyncio.get_running_loop()
        ua = cls(name)
        await loop.create_datagram_endpoint(lambda: ua, local_addr=("127.0.0.1", 0))
        assert ua.transport is not None
        ua.port = ua.transport.get_extra_info("sockname")[1]
        return ua

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inbox.put_nowait(parse_message(data))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def contact(self) -> str:
        return f"sip:{self.name}@{self.address}"

    def send(self, message: Message | str, to: tuple[str, int]) -> None:
        data = message.encode("latin-1") if isinstance(message, str) else message.serialize()
        assert self.transport is not None
        self.transport.sendto(data, to)

    async def expect(
        self, what: str | int, timeout: float = 3.0, skip: Callable[[Message], bool] | None = None
    ) -> Message:
        """The next message that is the method ``what`` or the status ``what``; messages
        for which ``skip`` is true (say, 100 Trying) are passed over."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.inbox.get()
                if skip is not None and skip(message):
                    continue
                if isinstance(message, Request) and message.method == what:
                    return message
                if isinstance(message, Response) and message.status == what:
                    return message
                raise AssertionError(f"{self.name}: expected {what}, got {message!r}")

    async def next(self, timeout: float = 3.0) -> Message:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def silence(self, seconds: float) -> None:
        """Nothing arrives for ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                message = await self.inbox.get()
        except TimeoutError:
            return
        raise AssertionError(f"{self.name}: expected nothing, got {message!r}")

    # -- building messages ------------------------------------------------------------------
    def request(
        self,
        method: str,
        uri: str,
        *,
        to: str = "sip:bob@example.com",
        from_: str = "sip:alice@example.com",
        call_id: str | None = None,
        cseq: int = 1,
        from_tag: str = "caller",
        to_tag: str | None = None,
        headers: tuple[str, ...] = (),
        branch: str | None = None,
    ) -> str:
        branch = branch or f"z9hG4bK-{self.name}-{next(_counter)}"
        to_header = f"<{to}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.address};branch={branch}",
            "Max-Forwards: 70",
            f"From: <{from_}>;tag={from_tag}",
            f"To: {to_header}",
            f"Call-ID: {call_id or f'call-{next(_counter)}@test'}",
            f"CSeq: {cseq} {method}",
            f"Contact: <{self.contact}>",
            *headers,
            "Content-Length: 0",
        ]
        return "\r\n".join(lines) + "\r\n\r\n"

    def answer(
        self, request: Request, status: int, *, tag: str | None = None, **kwargs: object
    ) -> Response:
        """A response to ``request`` with the Record-Route copied (a UAS does, §12.1.1)."""
        headers = [("Record-Route", rr) for rr in request.header_lines("record-route")]
        if status < 300 and status != 100:
            headers.append(("Contact", f"<{self.contact}>"))
        return make_response(request, status, to_tag=tag or self.name, headers=headers, **kwargs)  # type: ignore[arg-type]


def in_dialog(
    ua: UA,
    method: str,
    answer: Response,
    *,
    request_uri: str,
    from_: str,
    to: str,
    from_tag: str,
    to_tag: str,
    cseq: int,
    reverse_routes: bool = False,
) -> str:
    """A request inside the dialog that ``answer`` (a 2xx) set up: Route from its
    Record-Route (reversed for the callee's side, §12.1.1 / §12.1.2)."""
    routes = answer.header_values("record-route")
    if reverse_routes:
        routes = list(reversed(routes))
    return ua.request(
        method,
        request_uri,
        to=to,
        from_=from_,
        call_id=answer.call_id,
        cseq=cseq,
        from_tag=from_tag,
        to_tag=to_tag,
        headers=tuple(f"Route: {route}" for route in routes),
    )
