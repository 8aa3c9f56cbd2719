"""The proxy shell and a media relay that is slow to answer: a caller that cancels while
the relay makes its offer must not leave the call at the relay.

The relay here is a UDP socket speaking rtpengine's ng protocol that holds its answer to
an offer until the test lets it go (a slow relay is a real condition; the real rtpengine
answers too fast to be caught in the act: tests/integration/test_media.py has it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.media import MediaRelays
from sipfleet.media.bencode import decode, encode
from sipfleet.roles.proxy import build_engine
from sipfleet.sip import Response
from sipfleet.storage import Storage
from tests.core.proxy.harness import DOMAIN, bind
from tests.core.proxy.test_engine import make_config
from tests.core.proxy.ua import UA

SDP = (
    "v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\n"
)


class SlowRelay(asyncio.DatagramProtocol):
    """Answers pings at once and every other command when ``release`` is set."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.release = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        cookie, _, body = data.partition(b" ")
        command = decode(body)
        assert isinstance(command, dict)
        name = command[b"command"]
        assert isinstance(name, bytes)
        self.commands.append(name.decode())
        if name == b"ping":
            self._reply(cookie, {"result": "pong"}, addr)
            return
        reply: dict[str, Any] = {"result": "ok"}
        if name == b"offer":
            reply["sdp"] = command[b"sdp"]
        asyncio.get_running_loop().create_task(self._later(cookie, reply, addr))

    async def _later(self, cookie: bytes, reply: dict[str, Any], addr: Any) -> None:
        await self.release.wait()
        self._reply(cookie, reply, addr)

    def _reply(self, cookie: bytes, reply: dict[str, Any], addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(cookie + b" " + encode(reply), addr)


@pytest.fixture
async def slow_relay() -> AsyncIterator[tuple[SlowRelay, int]]:
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(SlowRelay, local_addr=("127.0.0.1", 0))
    yield relay, transport.get_extra_info("sockname")[1]
    transport.close()


async def test_a_call_cancelled_during_the_offer_is_deleted_at_the_relay(
    storage: Storage, slow_relay: tuple[SlowRelay, int]
) -> None:
    relay, port = slow_relay
    relays = MediaRelays([f"udp:127.0.0.1:{port}"], timeout_s=5.0)
    await relays.start()
    endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
    config = make_config()
    engine = build_engine(config, storage, endpoint, relays=relays)
    endpoint.handler = engine
    await endpoint.start()
    caller, bob = await UA.start("alice"), await UA.start("bob")
    try:
        await bind(storage, "bob", bob.contact)
        proxy = ("127.0.0.1", endpoint.addresses[0].port)
        invite = caller.request("INVITE", f"sip:bob@{DOMAIN}", call_id="slow@test")
        invite = invite.replace(
            "Content-Length: 0\r\n\r\n",
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}",
        )
        caller.send(invite, proxy)
        await caller.expect(100)
        for _ in range(200):  # bounded: 2 s
            if "offer" in relay.commands:
                break
            await asyncio.sleep(0.01)
        assert "offer" in relay.commands  # the caller is behind NAT: the call is relayed
        cancel = invite.replace("INVITE sip:", "CANCEL sip:", 1).replace(
            "CSeq: 1 INVITE", "CSeq: 1 CANCEL"
        )
        cancel = cancel.split("Content-Type:")[0] + "Content-Length: 0\r\n\r\n"
        caller.send(cancel, proxy)
        answers = [await caller.next(), await caller.next()]
        assert sorted(a.status for a in answers if isinstance(a, Response)) == [200, 487]
        relay.release.set()
        for _ in range(200):  # bounded: 2 s
            if "delete" in relay.commands:
                break
            await asyncio.sleep(0.01)
        assert relay.commands.count("delete") == 1
        await bob.silence(0.2)  # the cancelled call was never forwarded
    finally:
        caller.close()
        bob.close()
        await engine.close()
        await endpoint.close()
        await relays.close()
