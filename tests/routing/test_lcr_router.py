"""The proxy's LCR router: the dialled number, the call's capability, the trunks of the
reference example (DESIGN §3), defunct gateways left out and probed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sipfleet.routing.api import Authenticated, CallContext, OffNetTrunk, Reply
from sipfleet.routing.lcr import FAX, PHONE
from sipfleet.routing.lcr_cache import LcrCache
from sipfleet.routing.lcr_file import load_lcr_file
from sipfleet.routing.lcr_router import LcrRouter, LcrSettings, dialled_number, gateway_uri
from sipfleet.sip import Request, parse_message
from sipfleet.sip.uri import parse_uri
from sipfleet.storage import LcrSnapshot
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget
from sipfleet.transport.base import Peer

EXAMPLE = Path(__file__).parents[2] / "examples" / "lcr-capabilities.toml"
PEER = Peer("udp", "127.0.0.1", 5062, "127.0.0.1", 5060)
T38 = "v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=image 6000 udptl t38\r\n"
AUDIO = "v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


class FakeStore:
    """The two reads LcrCache makes of storage.lcr."""

    def __init__(self, rows: LcrRows) -> None:
        self.snapshot = LcrSnapshot(rows, 1)

    def replace(self, rows: LcrRows) -> None:
        self.snapshot = LcrSnapshot(rows, self.snapshot.version + 1)

    async def version(self) -> int:
        return self.snapshot.version

    async def load(self, *, replica: bool = True) -> LcrSnapshot:
        return self.snapshot


class Services:
    def __init__(self, preferences: dict[str, str] | None = None) -> None:
        self.prefs = preferences or {}
        self.asked: list[tuple[str, str]] = []

    def is_local_domain(self, host: str) -> bool:
        return host == "example.com"

    def is_trusted_peer(self, host: str) -> bool:
        return False

    async def authenticate(self, call: CallContext) -> Authenticated | Reply:
        return Authenticated("alice", "example.com")

    async def preferences(self, username: str, domain: str) -> dict[str, str]:
        self.asked.append((username, domain))
        return self.prefs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Prober:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Callable[[int], None]]] = []

    def probe(self, key: str, uri: str, answered: Callable[[int], None]) -> None:
        self.sent.append((key, uri, answered))


def call(
    uri: str = "sip:4312345@pstn.example.net",
    *,
    caller: str = "sip:alice@example.com",
    sdp: str = "",
    services: Services | None = None,
) -> CallContext:
    body = f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    text = (
        f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1\r\n"
        f"From: <{caller}>;tag=a\r\nTo: <{uri}>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n{body}"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    return CallContext(request, PEER, services or Services())


async def router_for(rows: LcrRows, clock: Clock | None = None, **settings: object) -> LcrRouter:
    defaults: dict[str, object] = {"trunk_timeout": 4.0, "defunct_after": 2}
    cache = LcrCache(FakeStore(rows))  # type: ignore[arg-type]
    router = LcrRouter(cache, LcrSettings(**{**defaults, **settings}), clock=clock or Clock())  # type: ignore[arg-type]
    await cache.reload()
    return router


@pytest.fixture
async def router() -> LcrRouter:
    return await router_for(load_lcr_file(EXAMPLE).rows)


async def trunks_of(router: LcrRouter, context: CallContext, cap: int | None = None) -> list[str]:
    found = await router.trunks(context, cap)
    assert not isinstance(found, Reply)
    return [trunk.uri for trunk in found]


# -- the dialled number ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "number"),
    [
        ("sip:4312345@pstn.example.net", "4312345"),
        ("sip:+43-1-234.5@gw;user=phone", "+4312345"),
        ("sip:%2B4312345@pstn.example.net", "+4312345"),
        ("sip:4312345;phone-context=+43@pstn.example.net;user=phone", "4312345"),
        ("sips:*99#@pstn.example.net", "*99#"),
        ("tel:+43-(1)-2345", "+4312345"),
        ("sip:alice@elsewhere.net", None),
        ("sip:43%2012@elsewhere.net", None),
        ("sip:pstn.example.net", None),
    ],
)
def test_the_dialled_number(uri: str, number: str | None) -> None:
    assert dialled_number(parse_uri(uri)) == number


# -- trunks ---------------------------------------------------------------------------------
async def test_a_phone_call_follows_the_reference_example(router: LcrRouter) -> None:
    found = await router.trunks(call(sdp=AUDIO), None)
    assert isinstance(found, list)
    assert found[0] == OffNetTrunk("sip:014312345@sipgw6", "sipgw6", 4.0)
    assert found[-1] == OffNetTrunk("sip:014312345@sipgw2", "sipgw2", 4.0)
    middle = sorted(trunk.uri for trunk in found[1:-1])
    assert middle == [f"sip:4312345@sipgw{n}" for n in (1, 3, 4, 5)]


async def test_a_t38_offer_is_a_fax_call(router: LcrRouter) -> None:
    uris = await trunks_of(router, call(sdp=T38))
    assert sorted(uris) == ["sip:024312345@sipgw2", "sip:024312345@sipgw6"]


async def test_the_callers_lcr_cap_preference_wins_over_the_offer() -> None:
    router = await router_for(load_lcr_file(EXAMPLE).rows)
    services = Services({"lcr_cap": "fax"})
    uris = await trunks_of(router, call(sdp=AUDIO, services=services))
    assert sorted(uris) == ["sip:024312345@sipgw2", "sip:024312345@sipgw6"]
    assert services.asked == [("alice", "example.com")]
    uris = await trunks_of(router, call(sdp=T38, services=Services({"lcr_cap": "1"})))
    assert uris[0] == "sip:014312345@sipgw6"


async def test_a_bad_lcr_cap_is_ignored(router: LcrRouter) -> None:
    uris = await trunks_of(router, call(sdp=T38, services=Services({"lcr_cap": "3"})))
    assert sorted(uris)[0].startswith("sip:02")  # two bits: not a preference; the offer decides


async def test_a_foreign_caller_has_no_preferences_to_read(router: LcrRouter) -> None:
    services = Services({"lcr_cap": "fax"})
    uris = await trunks_of(router, call(caller="sip:pbx@carrier.net", services=services))
    assert uris[0] == "sip:014312345@sipgw6"
    assert services.asked == []


async def test_the_policy_can_set_the_capability(router: LcrRouter) -> None:
    services = Services({"lcr_cap": "fax"})
    uris = await trunks_of(router, call(sdp=T38, services=services), PHONE)
    assert uris[0] == "sip:014312345@sipgw6"
    assert services.asked == []


async def test_no_number_or_no_rule_is_no_trunk() -> None:
    rows = LcrRows(
        (Gateway("gw", "10.0.0.1"),),
        (GatewayCapability("gw", PHONE),),
        (Rule(1, "43"),),
        (RuleTarget(1, "gw", PHONE),),
    )
    router = await router_for(rows)
    assert await router.trunks(call("sip:alice@elsewhere.net"), None) == []
    assert await router.trunks(call("sip:4912345@elsewhere.net"), None) == []
    assert await trunks_of(router, call("tel:+43-1"), None) == []  # "+431" is not "43..."
    assert await trunks_of(router, call("tel:431")) == ["sip:431@10.0.0.1"]


async def test_rule_patterns_see_the_caller_and_the_request_uri() -> None:
    rows = LcrRows(
        (Gateway("a", "10.0.0.1"), Gateway("b", "10.0.0.2")),
        (GatewayCapability("a", PHONE), GatewayCapability("b", PHONE)),
        (
            Rule(1, "43", from_uri="sip:*@pbx.example.com", stopper=True),
            Rule(2, "43", request_uri="sip:*@pstn.example.net"),
        ),
        (RuleTarget(1, "a", PHONE), RuleTarget(2, "b", PHONE, priority=2)),
    )
    router = await router_for(rows)
    assert await trunks_of(router, call(caller="sip:al@pbx.example.com")) == [
        "sip:4312345@10.0.0.1",
        "sip:4312345@10.0.0.2",
    ]
    assert await trunks_of(router, call()) == ["sip:4312345@10.0.0.2"]
    assert await trunks_of(router, call("sip:4312345@other.net")) == []


async def test_a_reload_changes_the_next_call_only() -> None:
    rows = load_lcr_file(EXAMPLE).rows
    store = FakeStore(rows)
    cache = LcrCache(store)  # type: ignore[arg-type]
    router = LcrRouter(cache, LcrSettings(trunk_timeout=4.0))
    await cache.reload()
    before = await trunks_of(router, call(sdp=AUDIO))
    store.replace(LcrRows(rows.gateways, rows.capabilities, (), ()))
    assert await cache.reload()
    assert before[0] == "sip:014312345@sipgw6"  # what a call got stays its own
    assert await trunks_of(router, call(sdp=AUDIO)) == []


# -- health ---------------------------------------------------------------------------------
async def test_a_gateway_failing_in_a_row_is_left_out_and_probed() -> None:
    clock = Clock()
    router = await router_for(load_lcr_file(EXAMPLE).rows, clock, probe_interval=2.0)
    prober = Prober()
    router.prober = prober
    router.trunk_ended("sipgw6", 503, False)
    assert (await trunks_of(router, call()))[0] == "sip:014312345@sipgw6"  # one failure: in
    router.trunk_ended("sipgw6", 408, False)
    uris = await trunks_of(router, call())
    assert len(uris) == 5
    assert not any("sipgw6" in uri for uri in uris)

    clock.now += 2.0
    router.tick()
    ((key, uri, answered),) = prober.sent
    assert (key, uri) == ("sipgw6", "sip:sipgw6")
    answered(200)
    assert (await trunks_of(router, call()))[0] == "sip:014312345@sipgw6"
    clock.now += 2.0
    router.tick()
    assert len(prober.sent) == 1  # back: no more probes


async def test_ringing_then_timing_out_does_not_count_against_the_gateway(
    router: LcrRouter,
) -> None:
    for _ in range(5):
        router.trunk_ended("sipgw6", 408, True)
    assert (await trunks_of(router, call()))[0] == "sip:014312345@sipgw6"


async def test_every_gateway_of_the_route_defunct_is_503() -> None:
    rows = LcrRows(
        (Gateway("a", "10.0.0.1", 5070, "tcp"),),
        (GatewayCapability("a", PHONE | FAX),),
        (Rule(1, ""),),
        (RuleTarget(1, "a", PHONE),),
    )
    router = await router_for(rows)
    router.trunk_ended("a", 500, False)
    router.trunk_ended("a", 500, False)
    found = await router.trunks(call(), None)
    assert isinstance(found, Reply)
    assert found.status == 503
    assert await router.trunks(call(sdp=T38), None) == []  # no fax route at all: no trunk
    assert gateway_uri(rows.gateways[0]) == "sip:10.0.0.1:5070;transport=tcp"


async def test_a_defunct_gateway_removed_from_the_data_is_forgotten() -> None:
    clock = Clock()
    rows = load_lcr_file(EXAMPLE).rows
    store = FakeStore(rows)
    cache = LcrCache(store)  # type: ignore[arg-type]
    router = LcrRouter(cache, LcrSettings(defunct_after=1, probe_interval=1.0), clock=clock)
    router.prober = prober = Prober()
    await cache.reload()
    router.trunk_ended("sipgw5", 503, False)
    gateways = tuple(g for g in rows.gateways if g.name != "sipgw5")
    capabilities = tuple(c for c in rows.capabilities if c.gw != "sipgw5")
    targets = tuple(t for t in rows.targets if t.gw != "sipgw5")
    store.replace(LcrRows(gateways, capabilities, rows.rules, targets))
    await cache.reload()
    clock.now += 1.0
    router.tick()
    assert prober.sent == []
    assert router.health.defunct(clock.now) == []
