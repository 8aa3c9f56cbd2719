"""The LB's edge guard in the balancer, in-process on real sockets (roles/lb.compose): a
source over its rate is dropped, unless it is an LCR gateway (lcr_gw), which a carrier
sending many calls from one address is."""

from __future__ import annotations

import asyncio

from tests.core.lb.test_balancer import invite, lb_before
from tests.transport.helpers import UdpClient

SENT = 6


async def relayed_of(sent: int, exempt_gateway: bool) -> int:
    proxy, phone = UdpClient(), UdpClient()
    async with lb_before(proxy, edge={"rate_per_s": 0.1, "burst": 2}) as lb:
        guard = lb.balancer.guard
        assert guard is not None
        if exempt_gateway:
            guard.exempt_gateways(["127.0.0.1", "gw.example.net"])
        for n in range(sent):
            phone.send(invite(phone, n), lb.address)
        relayed = 0
        while True:
            try:
                await asyncio.wait_for(proxy.recv(), 0.5)
            except TimeoutError:
                return relayed
            relayed += 1


async def test_a_source_over_its_rate_is_dropped_past_its_burst() -> None:
    assert await relayed_of(SENT, exempt_gateway=False) == 2


async def test_an_lcr_gateway_is_exempt() -> None:
    assert await relayed_of(SENT, exempt_gateway=True) == SENT
