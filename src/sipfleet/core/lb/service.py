"""One LB worker's life, once roles/lb.py has built its parts: the pools re-read from
``lb_target``, the health checks and the keepalive wheel on timers, the keepalive table
rebuilt at start, and (worker 0) the health view written for `sipfleet lb target list`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable

from sipfleet.core.clock import Clock, Timer
from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.core.lb.pinger import Keepalives
from sipfleet.core.lb.pools import BadTarget, Member, Pools, checked_target, members_of
from sipfleet.core.lb.probes import HealthChecker
from sipfleet.core.overload import no_backlog, watch
from sipfleet.dns.resolver import DnsResolver
from sipfleet.dns.rfc3263 import DnsError
from sipfleet.sip import SipUri
from sipfleet.storage import Storage
from sipfleet.storage.errors import StorageError
from sipfleet.storage.model import LbTarget
from sipfleet.transport.sockets import is_ip

log = logging.getLogger(__name__)
REPORT_INTERVAL_S = 5.0


class LbWorker:
    """Runs an endpoint whose handler is set (the balancer), with the pools, health checks
    and keepalives that balancer uses. ``index`` 0 writes the health view as ``node``."""

    def __init__(
        self,
        storage: Storage,
        endpoint: LbEndpoint,
        pools: Pools,
        health: HealthChecker,
        keepalives: Keepalives,
        *,
        node: str,
        pool_reload_s: float,
        observe: Callable[[float, float, int], object] | None = None,
        backlog: Callable[[], int] = no_backlog,
        gateways: Callable[[Iterable[str]], None] | None = None,
        dns: DnsResolver | None = None,
    ) -> None:
        """``observe``: the balancer's overload check (``Balancer.observe``), fed here
        from ``backlog`` (bytes waiting in the worker's UDP sockets,
        ``overload.receive_backlog``);
        ``gateways``: told the LCR gateways' addresses at each reload (edge exemption);
        ``dns``: looks up targets named by host (RFC 3263), its cache honouring TTLs."""
        self.storage = storage
        self.endpoint = endpoint
        self.index = endpoint.worker_index
        self.pools = pools
        self.health = health
        self.keepalives = keepalives
        self.node = node
        self.pool_reload_s = pool_reload_s
        self.observe = observe
        self.backlog = backlog
        self._report_soon = asyncio.Event()
        self._storage_down = False
        self._gateways = gateways
        self._lcr_version: int | None = None
        self.dns = dns or DnsResolver()
        self._members: dict[str, list[Member]] = {}  # the last addresses of each name
        self._gateway_hosts: list[tuple[str, int | None]] = []  # lcr_gw: (host, port)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        await self.reload_pools()
        clock = Clock()
        timers: list[Timer] = []
        tasks: list[asyncio.Task[None]] = []
        async with self.endpoint:
            await self._restore_flows()
            timers.append(clock.every(min(0.25, self.pools.probe_timeout / 2), self.health.tick))
            timers.append(clock.every(self.keepalives.table.tick, self.keepalives.tick))
            tasks.append(asyncio.create_task(self._reload_forever()))
            if self.observe is not None:
                tasks.append(asyncio.create_task(watch(self.observe, self.backlog)))
            if self.index == 0:
                self.health.on_change = lambda change: self._report_soon.set()
                tasks.append(asyncio.create_task(self._report_forever()))
            self.health.tick()
            # What start-up loaded (SQLAlchemy's schema and statements, the parser's
            # tables) stays for good: the collector need not traverse it again and again.
            gc.freeze()
            if ready is not None:
                ready()
            try:
                await asyncio.Event().wait()
            finally:
                for timer in timers:
                    timer.cancel()
                for task in tasks:
                    task.cancel()

    # -- pools -------------------------------------------------------------------------------
    async def reload_pools(self) -> None:
        try:
            rows = await self.storage.lb_targets.list_all()
        except StorageError as exc:
            if not self._storage_down:
                log.warning("lb_target not readable, keeping the pools as they are: %s", exc)
            self._storage_down = True
            return
        if self._storage_down:
            log.info("lb_target readable again")
        self._storage_down = False
        known_bad = dict(self.pools.rejected)
        added, removed = self.pools.update(rows, await self._resolve_names(rows))
        now = int(time.time())
        for target in added:
            self.health.changed.setdefault(target.key, now)
            log.info(
                "%s target %s added (weight %d, %s)",
                target.pool,
                target.uri,
                target.weight,
                target.state,
            )
        for target in removed:
            self.health.changed.pop(target.key, None)
            log.info("%s target %s removed", target.pool, target.uri)
        for uri, why in self.pools.rejected.items():
            if uri not in known_bad:
                log.warning("lb_target %s ignored: %s", uri, why)
        if added or removed:
            self._report_soon.set()
        await self._reload_gateways()

    async def _resolve_names(self, rows: list[LbTarget]) -> dict[str, list[Member] | str]:
        """The members of every target named by host: looked up at each reload, from the
        resolver's cache until the records' TTLs run out. A lookup that fails keeps the
        name's last members: a DNS outage does not empty a pool."""
        names = sorted({row.uri for row in rows if _names_host(row.uri)})
        found = await asyncio.gather(*(self._members_of(uri) for uri in names))
        self._members = {
            uri: m for uri, m in zip(names, found, strict=True) if not isinstance(m, str)
        }
        return dict(zip(names, found, strict=True))

    async def _members_of(self, uri: str) -> list[Member] | str:
        try:
            members = members_of(await self.dns.locate(checked_target(uri)))
        except DnsError as exc:
            kept = self._members.get(uri)
            if kept is None:
                return exc.reason
            log.warning("lb_target %s: %s; keeping its last addresses", uri, exc.reason)
            return kept
        if members != self._members.get(uri):
            log.info(
                "lb_target %s: %s",
                uri,
                ", ".join(f"{m.uri} (weight {m.weight}, tier {m.tier})" for m in members),
            )
        return members

    async def _reload_gateways(self) -> None:
        """The LCR gateways' addresses: the rows read again when ``lcr_version`` moved,
        a gateway named by host looked up (RFC 3263) at each reload, from the resolver's
        cache until the TTLs run out."""
        if self._gateways is None:
            return
        try:
            version = await self.storage.lcr.version()
            if version != self._lcr_version:
                entries = await self.storage.lcr.list_gateways()
                self._gateway_hosts = [(e.gateway.host, e.gateway.port) for e in entries]
                self._lcr_version = version
        except StorageError as exc:
            log.debug("lcr_gw not read: %s", exc)
        found = await asyncio.gather(*(self._addresses_of(*gw) for gw in self._gateway_hosts))
        self._gateways(address for addresses in found for address in addresses)

    async def _addresses_of(self, host: str, port: int | None) -> list[str]:
        if is_ip(host.strip("[]")):
            return [host]
        try:
            destinations = await self.dns.destinations(SipUri("sip", None, None, host, port))
        except DnsError as exc:
            log.debug("lcr_gw %s: %s", host, exc.reason)
            return []
        return [destination.host for destination in destinations]

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.pool_reload_s)
            await self.reload_pools()

    # -- flows -------------------------------------------------------------------------------
    async def _restore_flows(self) -> None:
        started = time.monotonic()
        try:
            restored = await self.keepalives.restore(self.storage)
        except StorageError as exc:
            log.warning("keepalive table not rebuilt (location not readable): %s", exc)
            return
        if restored:
            took = time.monotonic() - started
            log.info("keepalive table rebuilt: %d flows in %.2f s", restored, took)

    # -- the view for `sipfleet lb target list` ----------------------------------------------
    async def _report_forever(self) -> None:
        while True:
            self._report_soon.clear()
            try:
                await self.storage.lb_targets.report_health(
                    self.node, self.health.report(self.node)
                )
            except StorageError as exc:
                log.debug("health view not written: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_soon.wait(), REPORT_INTERVAL_S)


def _names_host(uri: str) -> bool:
    """A target URI whose host is a name to look up (a malformed one is left to the pools,
    which set it aside with the reason)."""
    try:
        return not is_ip(checked_target(uri).host_bare)
    except BadTarget:
        return False
