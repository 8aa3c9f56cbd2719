"""In-dialog requests whose Route names a proxy of the pool that is down or disabled go to
a live proxy of the pool, by Call-ID (sans-IO): a dialog outlives the proxy that
Record-Routed it."""

from __future__ import annotations

import pytest

from sipfleet.core.lb.pools import Pools
from sipfleet.core.lb.router import Forward, Reject
from sipfleet.sip import Request
from sipfleet.sip.flow import Flow
from sipfleet.storage.model import LbState, LbTarget
from tests.core.lb.messages import INTERNAL, LB_ID, PUBLIC, TOKENS, client, request, router

FIRST, SECOND = "sip:127.0.0.1:5080", "sip:127.0.0.1:5081"


def proxies(first: LbState = "active", *, first_down: bool = False) -> Pools:
    """Both proxies probed and up, except as asked."""
    made = Pools(probe_interval=1.0)
    made.update([LbTarget(1, "proxy", FIRST, 1, first), LbTarget(2, "proxy", SECOND, 1, "active")])
    for target in made.targets.values():
        target.health = "up"
    if first_down:
        made.targets[("proxy", FIRST)].health = "down"
    return made


def bye_through(proxy_port: int, call_id: str = "call-1@10.0.1.2") -> Request:
    """A BYE from the caller's flow: the LB's Record-Route (its token), then the proxy's."""
    token = TOKENS.encode(Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID))
    routes = (f"<sip:{token}@{PUBLIC}:5060;lr>", f"<sip:127.0.0.1:{proxy_port};lr;pv=x>")
    return request("BYE", to_tag="b1", call_id=call_id, routes=routes)


def forward_of(decision: object) -> Forward:
    assert isinstance(decision, Forward), decision
    assert decision.destination.host == INTERNAL
    return decision


def test_the_route_is_followed_while_its_proxy_is_up() -> None:
    made = proxies()
    for port in (5080, 5081):
        for call in range(10):
            decision = router(made=made).route(bye_through(port, f"call-{call}"), client())
            assert forward_of(decision).destination.port == port


@pytest.mark.parametrize(
    ("state", "down"), [("active", True), ("disabled", False), ("draining", True)]
)
def test_a_route_to_a_proxy_out_of_service_goes_to_a_live_one(state: LbState, down: bool) -> None:
    made = proxies(state, first_down=down)
    for call in range(20):  # whatever the Call-ID
        decision = forward_of(router(made=made).route(bye_through(5080, f"call-{call}"), client()))
        assert decision.destination.port == 5081
        assert decision.pop_routes == 1  # the LB's own; the proxy's Route stays for the proxy


def test_a_draining_proxy_that_is_up_keeps_its_dialogs() -> None:
    made = proxies("draining")
    decision = forward_of(router(made=made).route(bye_through(5080), client()))
    assert decision.destination.port == 5080


def test_no_live_proxy_left_is_503() -> None:
    made = proxies(first_down=True)
    made.targets[("proxy", SECOND)].health = "down"
    decision = router(made=made).route(bye_through(5080), client())
    assert isinstance(decision, Reject)
    assert decision.status == 503
