"""The LB worker's reloads (roles/lb.compose, in-process): an LCR gateway named by host is
exempt from the edge's rate limits at the addresses it resolves to. The name is pinned in
a hosts file of the test's, so nothing asks a DNS server."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from sipfleet.config import config_from_dict
from sipfleet.core.lb.balancer import Balancer
from sipfleet.dns.hosts import HostsFile
from sipfleet.dns.resolver import DnsResolver
from sipfleet.roles.lb import WorkerSockets, compose, sides_of
from sipfleet.storage import Storage
from sipfleet.storage.lcr_rows import Gateway
from sipfleet.storage.model import GatewayEntry
from sipfleet.transport.sockets import bind_all


class Tables:
    """What the worker reads at a reload: no pool targets, two gateways."""

    def __init__(self) -> None:
        self.lb_targets = self
        self.lcr = self

    async def list_all(self, pool: Any = None) -> list[Any]:
        return []

    async def version(self) -> int:
        return 1

    async def list_gateways(self) -> list[GatewayEntry]:
        named, numeric = Gateway("carrier", "gw.example.net"), Gateway("pbx", "192.0.2.9", 5070)
        return [GatewayEntry(named, ()), GatewayEntry(numeric, ())]


async def test_a_gateway_named_by_host_is_exempt_at_its_addresses(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("198.51.100.20 gw.example.net\n")
    config = config_from_dict(
        {"node": {"cluster_secret": "svc-test"}, "lb": {"listen": ["udp:127.0.0.1:0"]}}
    )
    sockets = bind_all(sides_of(config).listen)
    control = bind_all(sides_of(config).listen)[0]
    own = WorkerSockets(0, [*sockets, control], {0: control.getsockname()[:2]})
    worker = compose(config, cast(Storage, Tables()), own, 1)
    worker.dns = DnsResolver(
        resolv_conf=str(tmp_path / "none"), hosts=HostsFile(str(tmp_path / "hosts"))
    )
    try:
        await worker.reload_pools()
        balancer = worker.endpoint.handler
        assert isinstance(balancer, Balancer)
        assert balancer.guard is not None
        assert balancer.guard.gateways == frozenset({"198.51.100.20", "192.0.2.9"})
    finally:
        for sock in [*sockets, control]:
            sock.close()
