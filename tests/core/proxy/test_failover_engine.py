"""Off-net calls through the proxy engine and its LCR router over real UDP sockets on
127.0.0.1: scripted UAs play the caller and two gateways, the LCR data lives in a
temporary SQLite database. Short timers: trunk timeout 0.3 s, probes every 0.2 s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sipfleet.config import Config, config_from_dict
from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.engine import ProxyEngine
from sipfleet.roles.proxy import build_engine
from sipfleet.routing.lcr import PHONE
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.sip import Request, Response
from sipfleet.storage import Storage, open_storage
from sipfleet.storage.dsn import Dsn
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget
from sipfleet.storage.migrate import upgrade
from tests.core.proxy.ua import UA

DOMAIN = "example.com"
NUMBER = "4312345"
TRUNK_TIMEOUT_S = 0.3


def is_trying(message: object) -> bool:
    return isinstance(message, Response) and message.status == 100


def make_config(**proxy: Any) -> Config:
    return config_from_dict(
        {
            "node": {"cluster_secret": "test-secret"},
            "sip": {"domains": [DOMAIN], "t1_ms": 50, "timer_c_s": 3, "auth_algorithms": ["MD5"]},
            "proxy": {
                "authenticate": False,
                "lcr_trunk_timeout_s": TRUNK_TIMEOUT_S,
                "lcr_defunct_after": 2,
                "lcr_defunct_s": 30,
                "lcr_probe_interval_s": 0.2,
                **proxy,
            },
        }
    )


class OffNetProxy:
    def __init__(self, engine: ProxyEngine, endpoint: SipEndpoint, router: LcrRouter) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.router = router

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.endpoint.addresses[0].port)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    dsn = f"sqlite:///{tmp_path / 'lcr.db'}"
    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    yield storage
    await storage.close()


@pytest.fixture
async def gateways() -> AsyncIterator[tuple[UA, UA]]:
    first, second = await UA.start("gw1"), await UA.start("gw2")
    yield first, second
    first.close()
    second.close()


@pytest.fixture
async def caller() -> AsyncIterator[UA]:
    ua = await UA.start("alice")
    yield ua
    ua.close()


def two_trunks(first: UA, second: UA) -> LcrRows:
    """gw1 (prefix 01) first, gw2 (prefix 05) second, for numbers starting 43."""
    return LcrRows(
        (Gateway("gw1", "127.0.0.1", first.port), Gateway("gw2", "127.0.0.1", second.port)),
        (GatewayCapability("gw1", PHONE, "01"), GatewayCapability("gw2", PHONE, "05")),
        (Rule(1, "43"),),
        (RuleTarget(1, "gw1", PHONE, priority=1), RuleTarget(1, "gw2", PHONE, priority=2)),
    )


@pytest.fixture
async def proxy(
    storage: Storage, gateways: tuple[UA, UA]
) -> AsyncIterator[Callable[..., Awaitable[OffNetProxy]]]:
    running: list[OffNetProxy] = []

    async def start(**settings: Any) -> OffNetProxy:
        await storage.lcr.replace_all(two_trunks(*gateways))
        config = make_config(**settings)
        endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
        router = LcrRouter.from_config(config, storage.lcr)
        engine = build_engine(config, storage, endpoint, off_net=router)
        endpoint.handler = engine
        await endpoint.start()
        await router.start(engine.prober)
        running.append(OffNetProxy(engine, endpoint, router))
        return running[-1]

    yield start
    for each in running:
        await each.router.close()
        await each.engine.close()
        await each.endpoint.close()


async def dial(caller: UA, proxy: OffNetProxy, number: str = NUMBER) -> str:
    """An INVITE to ``number`` at a foreign domain (off-net); returns its Call-ID."""
    uri = f"sip:{number}@pstn.example.net"
    text = caller.request("INVITE", uri, to=uri)
    caller.send(text, proxy.address)
    await caller.expect(100)
    return text.split("Call-ID: ", 1)[1].split("\r\n", 1)[0]


async def incoming(gateway: UA, method: str = "INVITE", timeout: float = 2.0) -> Request:
    message = await gateway.expect(method, timeout=timeout)
    assert isinstance(message, Request)
    return message


def answer(gateway: UA, request: Request, status: int, proxy: OffNetProxy) -> None:
    gateway.send(gateway.answer(request, status), proxy.address)


async def ack_of_failure(gateway: UA) -> None:
    """The proxy's client transaction acknowledges a failure hop by hop."""
    await incoming(gateway, "ACK")


# -- failover ------------------------------------------------------------------------------
async def test_503_from_the_first_gateway_then_200_from_the_second(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy()
    gw1, gw2 = gateways
    await dial(caller, px)
    first = await incoming(gw1)
    assert first.uri_text == f"sip:01{NUMBER}@127.0.0.1:{gw1.port}"
    answer(gw1, first, 503, px)
    await ack_of_failure(gw1)
    second = await incoming(gw2)
    assert second.uri_text == f"sip:05{NUMBER}@127.0.0.1:{gw2.port}"
    answer(gw2, second, 200, px)
    final = await caller.expect(200)
    assert final.to.tag == "gw2"
    assert px.router.health.failures("gw1") == 1


async def test_a_gateway_that_never_answers_is_left_after_the_trunk_timeout(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy()
    gw1, gw2 = gateways
    await dial(caller, px)
    await incoming(gw1)
    # no answer: after 0.3 s the second trunk (gw1's retransmissions are skipped)
    second = await incoming(gw2, timeout=1.5)
    answer(gw2, second, 200, px)
    await caller.expect(200)
    # gw1 never sent anything: nothing to cancel (§9.1), only retransmissions came
    while not gw1.inbox.empty():
        message = gw1.inbox.get_nowait()
        assert isinstance(message, Request)
        assert message.method == "INVITE"


async def test_a_gateway_that_only_says_100_is_cancelled_at_the_trunk_timeout(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy()
    gw1, gw2 = gateways
    await dial(caller, px)
    first = await incoming(gw1)
    answer(gw1, first, 100, px)
    cancel = await incoming(gw1, "CANCEL", timeout=1.5)
    # the next trunk at once, not after gw1 has confirmed the CANCEL
    second = await incoming(gw2, timeout=0.5)
    answer(gw1, cancel, 200, px)
    answer(gw1, first, 487, px)
    await ack_of_failure(gw1)
    answer(gw2, second, 200, px)
    await caller.expect(200)


async def test_a_busy_first_trunk_ends_the_search(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy()
    gw1, gw2 = gateways
    await dial(caller, px)
    answer(gw1, await incoming(gw1), 486, px)
    await caller.expect(486)
    await gw2.silence(0.5)
    assert px.router.health.failures("gw1") == 0


async def test_ringing_goes_up_and_all_failing_gives_the_last_failure(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy()
    gw1, gw2 = gateways
    await dial(caller, px)
    first = await incoming(gw1)
    answer(gw1, first, 183, px)
    await caller.expect(183)
    answer(gw1, first, 500, px)
    second = await incoming(gw2)
    answer(gw2, second, 502, px)
    await caller.expect(502)


async def test_caller_cancel_stops_the_search(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy()
    gw1, gw2 = gateways
    call_id = await dial(caller, px)
    first = await incoming(gw1)
    answer(gw1, first, 180, px)
    await caller.expect(180)
    cancel = caller.request(
        "CANCEL",
        f"sip:{NUMBER}@pstn.example.net",
        to=f"sip:{NUMBER}@pstn.example.net",
        call_id=call_id,
        branch=first.vias[1].branch,  # the caller's own INVITE branch, below the proxy's
    )
    caller.send(cancel, px.address)
    to_gw1 = await incoming(gw1, "CANCEL")
    answer(gw1, to_gw1, 200, px)
    answer(gw1, first, 487, px)
    received = [await caller.next() for _ in range(2)]
    assert sorted((m.status, m.cseq.method) for m in received if isinstance(m, Response)) == [
        (200, "CANCEL"),
        (487, "INVITE"),
    ]
    await gw2.silence(0.5)


# -- health --------------------------------------------------------------------------------
async def test_a_failing_gateway_is_skipped_probed_and_brought_back(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy()
    gw1, gw2 = gateways
    for _ in range(2):  # lcr_defunct_after = 2
        await dial(caller, px)
        answer(gw1, await incoming(gw1), 503, px)
        await ack_of_failure(gw1)
        answer(gw2, await incoming(gw2), 200, px)
        await caller.expect(200)
    assert px.router.health.is_defunct("gw1", px.router.clock())

    await dial(caller, px)  # straight to gw2
    answer(gw2, await incoming(gw2), 200, px)
    await caller.expect(200)

    probe = await incoming(gw1, "OPTIONS", timeout=1.5)  # every 0.2 s while defunct
    assert probe.uri_text == f"sip:127.0.0.1:{gw1.port}"
    assert probe.top_via.port == px.address[1]  # from the proxy's own address
    answer(gw1, probe, 200, px)
    await gw1.silence(0.1)
    assert not px.router.health.is_defunct("gw1", px.router.clock())

    await dial(caller, px)  # gw1 first again
    answer(gw1, await incoming(gw1), 200, px)
    await caller.expect(200)


async def test_every_gateway_defunct_is_503(
    proxy: Any, gateways: tuple[UA, UA], caller: UA
) -> None:
    px = await proxy(lcr_defunct_after=1)
    gw1, gw2 = gateways
    await dial(caller, px)
    answer(gw1, await incoming(gw1), 500, px)
    await ack_of_failure(gw1)
    answer(gw2, await incoming(gw2), 500, px)
    await caller.expect(500)
    await dial(caller, px)
    final = await caller.expect(503)
    assert final.reason == "No Gateway Available"


async def test_no_route_is_404(proxy: Any, caller: UA) -> None:
    px = await proxy()
    await dial(caller, px, "4912345")
    await caller.expect(404)
