"""One LB worker: its endpoint, the pools re-read from ``lb_target``, the health checks,
the keepalive wheel, and (worker 0) the health view written for `sipfleet lb target list`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from sipfleet.config import Config
from sipfleet.core.clock import Clock, Timer
from sipfleet.core.lb.balancer import Balancer
from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.core.lb.pinger import Keepalives
from sipfleet.core.lb.pools import Pools
from sipfleet.core.lb.probes import HealthChecker
from sipfleet.core.lb.router import Router
from sipfleet.core.lb.sides import Sides
from sipfleet.core.stateless import StatelessForwarder
from sipfleet.sip.flow import FlowTokens
from sipfleet.storage import Storage
from sipfleet.storage.errors import StorageError
from sipfleet.transport.base import TransportLimits

log = logging.getLogger(__name__)
REPORT_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSockets:
    index: int
    sockets: list[socket.socket]  # the worker's listening sockets, then its control socket
    controls: dict[int, tuple[str, int]]  # every worker's control socket address


def sides_of(config: Config) -> Sides:
    return Sides(config.lb.listen, config.lb.internal_listen)


def lb_id_of(config: Config, sides: Sides) -> int:
    """``lb.id``, else a number derived from the first internal address (stable across
    restarts, different for LBs on different addresses)."""
    if config.lb.id >= 0:
        return config.lb.id
    first = sides.internal[0]
    return zlib.crc32(f"{first.host}:{first.port}".encode()) & 0xFFFF


class LbWorker:
    def __init__(self, config: Config, storage: Storage, own: WorkerSockets, workers: int) -> None:
        section = config.lb
        loop = asyncio.get_running_loop()
        self.config = config
        self.storage = storage
        self.index = own.index
        self.sides = sides = sides_of(config)
        tokens = FlowTokens(config.node.cluster_secret.encode())
        lb_id = lb_id_of(config, sides)
        self.pools = Pools(section.probe_interval_s)
        self.endpoint = LbEndpoint(
            sides.listen,
            sockets=own.sockets,
            control=own.controls[own.index],
            siblings=own.controls,
            worker_index=own.index,
            limits=TransportLimits.from_config(config.sip),
        )
        forwarder = StatelessForwarder(self.endpoint, force_rport=section.force_rport)
        router = Router(
            sides,
            tokens,
            self.pools,
            lb_id=lb_id,
            worker=own.index,
            has_connection=self.endpoint.has_connection,
        )
        self.health = HealthChecker(self.endpoint, self.pools, sides, loop.time)
        self.keepalives = Keepalives(
            self.endpoint,
            sides,
            tokens,
            lb_id=lb_id,
            workers=workers,
            interval=section.keepalive_interval_s,
            method=section.keepalive_method,
            enabled=section.keepalive,
            now=loop.time,
        )
        self.balancer = Balancer(
            self.endpoint, router, forwarder, self.health, self.keepalives, tokens
        )
        self.endpoint.handler = self.balancer
        self._report_soon = asyncio.Event()
        self._storage_down = False

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
        added, removed = self.pools.update(rows)
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

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.lb.pool_reload_s)
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
                    self.config.node.name, self.health.report(self.config.node.name)
                )
            except StorageError as exc:
                log.debug("health view not written: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_soon.wait(), REPORT_INTERVAL_S)
