"""MediaRelays against a real rtpengine (Debian's rtpengine-daemon) on 127.0.0.1.

A few tests use a fake relay instead (a socket of the test's own), where rtpengine
cannot be made to misbehave: dropping a datagram, never answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sipfleet.media import bencode
from sipfleet.media.client import MediaRelays
from sipfleet.media.errors import MediaRelayError
from sipfleet.media.relays import RelayAddress
from tests.integration.harness import free_port
from tests.rtpengine import Rtpengine, running_rtpengine, why_no_rtpengine

pytestmark = pytest.mark.skipif(why_no_rtpengine() is not None, reason=str(why_no_rtpengine()))

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.168.1.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=ice-ufrag:F7gI\r\n"
    b"a=candidate:1 1 UDP 2130706431 192.168.1.10 49170 typ host\r\n"
    b"a=sendrecv\r\n"
)
ANSWER_SDP = SDP.replace(b"alice", b"bob").replace(b"192.168.1.10", b"10.1.2.3")
PORT_MIN, PORT_MAX = 36000, 36199  # rtpengine's media ports, apart from other tests'


def fast_relays(
    entries: list[str], *, down_after: int = 2, max_in_flight: int = 100
) -> MediaRelays:
    """Relays with the times of a test: give up after 0.4 s, ping every 0.15 s."""
    return MediaRelays(
        entries,
        timeout_s=0.4,
        retransmit_s=0.1,
        ping_interval_s=0.15,
        down_after=down_after,
        max_in_flight=max_in_flight,
    )


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rtpengine]:
    workdir = tmp_path_factory.mktemp("rtpengine")
    port = free_port()
    with running_rtpengine(workdir, ng_port=port, port_min=PORT_MIN, port_max=PORT_MAX) as engine:
        yield engine


@pytest.fixture
async def relays(rtpengine: Rtpengine) -> AsyncIterator[MediaRelays]:
    pool = fast_relays([f"udp:127.0.0.1:{rtpengine.ng_port}"])
    await pool.start()
    yield pool
    await pool.close()


def only(pool: MediaRelays) -> RelayAddress:
    (relay,) = pool.relays
    return relay


def media_address(sdp: bytes) -> tuple[str, int]:
    text = sdp.decode()
    connection = re.search(r"^c=IN IP4 (\S+)\r$", text, re.MULTILINE)
    media = re.search(r"^m=audio (\d+) RTP/AVP", text, re.MULTILINE)
    assert connection is not None, text
    assert media is not None, text
    return connection.group(1), int(media.group(1))


async def test_ping_finds_the_relay_up(relays: MediaRelays) -> None:
    relay = only(relays)
    assert relays.up(relay)
    await relays.ping(relay)
    assert relays.counters()["relays_up"] == 1


async def test_offer_answer_delete_of_a_call(relays: MediaRelays) -> None:
    relay = only(relays)
    offered = await relays.offer(
        relay, call_id="call-1", from_tag="alice", sdp=SDP, received_from="203.0.113.7"
    )
    host, port = media_address(offered)
    assert host == "127.0.0.1"  # rtpengine's interface, not the phone's private address
    assert PORT_MIN <= port <= PORT_MAX
    assert b"o=alice 2890844526 2890844526 IN IP4 127.0.0.1" in offered  # replace origin
    assert b"a=candidate" not in offered  # ICE removed

    answered = await relays.answer(
        relay,
        call_id="call-1",
        from_tag="alice",
        to_tag="bob",
        sdp=ANSWER_SDP,
        received_from="198.51.100.2",
    )
    answer_host, answer_port = media_address(answered)
    assert answer_host == "127.0.0.1"
    assert PORT_MIN <= answer_port <= PORT_MAX
    assert answer_port != port

    tags = (await relays.query(relay, call_id="call-1"))[b"tags"]
    assert isinstance(tags, dict)
    assert set(tags) == {b"alice", b"bob"}
    await relays.delete(relay, call_id="call-1")
    await relays.delete(relay, call_id="call-1")  # gone already: not a failure
    with pytest.raises(MediaRelayError, match="Unknown call-id"):
        await relays.query(relay, call_id="call-1")


async def test_an_error_reply_names_relay_and_reason(relays: MediaRelays) -> None:
    relay = only(relays)
    with pytest.raises(MediaRelayError) as failure:
        await relays.answer(
            relay, call_id="no-such-call", from_tag="a", to_tag="b", sdp=SDP, received_from=None
        )
    assert str(failure.value) == f"media relay {relay.name}: answer failed: Unknown call-id"
    assert relays.up(relay)  # it answered: an error is not a sign of a dead relay
    assert relays.counters()["errors"] == 1


async def test_a_relay_not_running_times_out_and_is_down() -> None:
    pool = fast_relays([f"udp:127.0.0.1:{free_port()}"])
    await pool.start()
    try:
        relay = only(pool)
        assert not pool.up(relay)
        assert pool.pick("call") is None
        resent = pool.counters()["retransmissions"]  # the pings' too
        started = time.monotonic()
        with pytest.raises(
            MediaRelayError, match=rf"{relay.name}: no answer to offer within 0.4 s"
        ):
            await pool.offer(relay, call_id="c", from_tag="f", sdp=SDP, received_from=None)
        assert time.monotonic() - started < 0.4 + 0.3  # slack for a busy machine
        counters = pool.counters()
        assert (counters["timeouts"], counters["relays_up"]) == (1, 0)
        assert counters["retransmissions"] - resent >= 3  # at 0.1, 0.2, 0.3 s
    finally:
        await pool.close()


async def test_health_check_brings_a_relay_back_and_takes_it_away(tmp_path: Path) -> None:
    port = free_port()
    pool = fast_relays([f"udp:127.0.0.1:{port}"], down_after=2)
    await pool.start()
    try:
        relay = only(pool)
        assert not pool.up(relay)
        with running_rtpengine(tmp_path, ng_port=port, port_min=36200, port_max=36299):
            await wait_until(lambda: pool.up(relay))
            assert pool.pick("any call") == relay
        await wait_until(lambda: not pool.up(relay))
        assert pool.counters()["ping_misses"] >= 2
    finally:
        await pool.close()


async def wait_until(condition: object, limit_s: float = 3.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "not within the limit"
        await asyncio.sleep(0.02)


async def test_named_knows_only_configured_relays(relays: MediaRelays) -> None:
    relay = only(relays)
    assert relays.named(relay.name) == relay
    assert relays.named("127.0.0.1:9") is None
    stranger = RelayAddress("127.0.0.1", 9)
    with pytest.raises(MediaRelayError, match=re.escape("127.0.0.1:9: not a configured relay")):
        await relays.delete(stranger, call_id="c")


def test_pick_spreads_by_weight_and_is_stable() -> None:
    pool = MediaRelays(["udp:127.0.0.1:2001", "udp:127.0.0.1:2002=3"])
    for link in pool._links.values():  # no sockets: as a health check would see them
        link.up = True
    picks = [pool.pick(f"call-{n}") for n in range(4000)]
    heavy = sum(relay is not None and relay.name == "127.0.0.1:2002" for relay in picks)
    assert heavy / len(picks) == pytest.approx(0.75, abs=0.03)
    assert [pool.pick(f"call-{n}") for n in range(4000)] == picks
    other = MediaRelays(["udp:127.0.0.1:2002=3", "udp:127.0.0.1:2001"])  # another proxy
    for link in other._links.values():
        link.up = True
    assert [other.pick(f"call-{n}") for n in range(4000)] == picks


class FakeRelay(asyncio.DatagramProtocol):
    """Answers pings at once; answers other commands only to the ``answer_on``-th copy
    of a cookie (0: never), as rtpengine would (pong, or ok with the SDP it was sent)."""

    def __init__(self, answer_on: int) -> None:
        self.answer_on = answer_on
        self.seen: dict[bytes, int] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        cookie, _, payload = data.partition(b" ")
        body = bencode.decode(payload)
        assert isinstance(body, dict)
        assert self.transport is not None
        if body[b"command"] == b"ping":
            self.transport.sendto(cookie + b" d6:result4:ponge", addr)
            return
        self.seen[cookie] = self.seen.get(cookie, 0) + 1
        if self.seen[cookie] == self.answer_on:
            self.transport.sendto(b"stranger d6:result2:oke", addr)  # ignored: not ours
            reply = {b"result": b"ok", b"sdp": body[b"sdp"]}
            self.transport.sendto(cookie + b" " + bencode.encode(reply), addr)


async def fake_relay(answer_on: int) -> tuple[FakeRelay, asyncio.DatagramTransport, str]:
    loop = asyncio.get_running_loop()
    transport, fake = await loop.create_datagram_endpoint(
        lambda: FakeRelay(answer_on), local_addr=("127.0.0.1", 0)
    )
    return fake, transport, f"udp:127.0.0.1:{transport.get_extra_info('sockname')[1]}"


async def test_a_lost_command_is_sent_again_with_the_same_cookie() -> None:
    fake, transport, entry = await fake_relay(answer_on=3)
    pool = fast_relays([entry])
    await pool.start()
    try:
        sdp = await pool.offer(only(pool), call_id="c", from_tag="f", sdp=SDP, received_from=None)
        assert sdp == SDP
        assert list(fake.seen.values()) == [3]  # one cookie, sent three times
        counters = pool.counters()
        assert (counters["retransmissions"], counters["ignored_replies"]) == (2, 1)
    finally:
        await pool.close()
        transport.close()


async def test_past_the_cap_commands_are_refused_at_once() -> None:
    _, transport, entry = await fake_relay(answer_on=0)  # answers pings, never a command
    pool = fast_relays([entry], max_in_flight=1)
    await pool.start()
    try:
        relay = only(pool)
        first = asyncio.create_task(pool.delete(relay, call_id="c1"))
        await asyncio.sleep(0)
        with pytest.raises(MediaRelayError, match=rf"{relay.name}: overloaded"):
            await pool.delete(relay, call_id="c2")
        with pytest.raises(MediaRelayError, match="no answer"):
            await first
        assert pool.counters()["overloaded"] == 1
        assert pool.counters()["in_flight"] == 0
    finally:
        await pool.close()
        transport.close()


async def test_commands_leave_no_reference_cycles(relays: MediaRelays) -> None:
    """The proxy collects only generation 0: a command's objects must go by refcount."""
    relay = only(relays)
    silent = fast_relays([f"udp:127.0.0.1:{free_port()}"])
    await silent.start()
    gc.collect()
    gc.disable()
    try:
        for n in range(5):
            await relays.offer(relay, call_id=f"g{n}", from_tag="a", sdp=SDP, received_from=None)
            await relays.delete(relay, call_id=f"g{n}")
            with contextlib.suppress(MediaRelayError):  # an error reply
                await relays.query(relay, call_id=f"g{n}")
        with contextlib.suppress(MediaRelayError):  # a timeout
            await silent.ping(only(silent))
        assert gc.collect() == 0
    finally:
        gc.enable()
        await silent.close()


async def test_a_command_before_start_fails_at_once() -> None:
    pool = fast_relays(["udp:127.0.0.1:9"])
    with pytest.raises(MediaRelayError, match=re.escape("127.0.0.1:9: no socket")):
        await pool.ping(only(pool))
    assert pool.counters()["commands"] == 0
