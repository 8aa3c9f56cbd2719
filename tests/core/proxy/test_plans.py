"""The planner: a policy's decision to a fork plan, without the database (Relay)."""

from __future__ import annotations

import asyncio
from typing import cast

from sipfleet.core.proxy.plans import Planner
from sipfleet.core.proxy.targets import ForkPlan, Target
from sipfleet.routing.api import CallContext, CallServices, Relay
from sipfleet.storage import Storage
from sipfleet.transport.base import Peer
from tests.core.proxy.messages import request

PEER = Peer("udp", "198.51.100.7", 5062, "192.0.2.1", 5060)
PLANNER = Planner(cast(Storage, None), serial_forking=False)  # a Relay reads no storage


def plan(decision: Relay, extra: tuple[tuple[str, str], ...] = ()) -> ForkPlan:
    call = CallContext(request("BYE"), PEER, cast(CallServices, object()))
    call.extra_headers = list(extra)
    found = asyncio.run(PLANNER.plan(decision, call))
    assert isinstance(found, ForkPlan)
    return found


def test_a_plain_relay_goes_where_the_request_points() -> None:
    found = plan(Relay())
    assert found == ForkPlan(((Target(),),))
    assert found.headers == ()
    assert found.advance(486) is True  # next group on a failure, as any parallel plan
    assert found.advance(603) is False


def test_a_relay_with_headers_carries_them() -> None:
    from_decision = plan(Relay(headers=(("X-A", "1"),)), extra=(("X-B", "2"),))
    assert from_decision.groups == ((Target(),),)
    assert from_decision.headers == (("X-A", "1"), ("X-B", "2"))
    added_by_policy = plan(Relay(), extra=(("X-B", "2"),))
    assert added_by_policy.headers == (("X-B", "2"),)


def test_a_relay_to_uris_forks_to_each() -> None:
    found = plan(Relay(uris=("sip:a@192.0.2.5", "sip:b@192.0.2.6")))
    assert found.groups == ((Target("sip:a@192.0.2.5"), Target("sip:b@192.0.2.6")),)
    assert found.headers == ()
