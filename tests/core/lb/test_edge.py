"""The LB's edge guard in the balancer, in-process on real sockets (roles/lb.compose): a
source over its rate is dropped, unless it is an LCR gateway (lcr_gw), which a carrier
sending many calls from one address is."""

from __future__ import annotations

import asyncio
from typing import cast

from sipfleet.config import config_from_dict
from sipfleet.core.lb.balancer import Balancer
from sipfleet.roles.lb import WorkerSockets, compose, sides_of
from sipfleet.storage import LbTarget, Storage
from sipfleet.transport.sockets import bind_all
from tests.core.lb.test_balancer import invite
from tests.transport.helpers import UdpClient

SENT = 6


async def relayed_of(sent: int, exempt_gateway: bool) -> int:
    proxy, phone = UdpClient(), UdpClient()
    config = config_from_dict(
        {
            "node": {"cluster_secret": "edge-test"},
            "lb": {"listen": ["udp:127.0.0.1:0"], "keepalive": False},
            "edge": {"rate_per_s": 0.1, "burst": 2},
        }
    )
    sockets = bind_all(sides_of(config).listen)
    control = bind_all(sides_of(config).listen)[0]
    own = WorkerSockets(0, [*sockets, control], {0: control.getsockname()[:2]})
    worker = compose(config, cast(Storage, None), own, 1)
    worker.pools.update([LbTarget(1, "proxy", f"sip:{proxy.host}:{proxy.port}", 1, "active")])
    async with worker.endpoint:
        balancer = worker.endpoint.handler
        assert isinstance(balancer, Balancer)
        assert balancer.guard is not None
        if exempt_gateway:
            balancer.guard.exempt_gateways(["127.0.0.1", "gw.example.net"])
        lb = sockets[0].getsockname()[:2]
        for n in range(sent):
            phone.send(invite(phone, n), lb)
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
