"""Health checks of the pool targets: OPTIONS every probe interval (the asyncio shell of
``pools``). UDP probes leave from the worker's control socket, so their answers come
back to this worker; TCP probes come back on the connection they went out on."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.core.lb.pools import HealthChange, Pools, PoolTarget, best_health
from sipfleet.core.lb.sides import Sides, hostport
from sipfleet.storage.model import LbPool, LbTargetHealth
from sipfleet.transport.base import TransportError

log = logging.getLogger(__name__)
PROBE_BRANCH = "z9hG4bK-lbp-"


class HealthChecker:
    def __init__(self, endpoint: LbEndpoint, pools: Pools, sides: Sides, now: Callable[[], float]):
        self.endpoint = endpoint
        self.pools = pools
        self.sides = sides
        self.now = now
        self.worker = endpoint.worker_index
        self._tag = secrets.token_hex(4)
        self.changed: dict[tuple[str, str], int] = {}  # (pool, uri) -> unix time of change
        self.on_change: Callable[[HealthChange], None] | None = None
        self.probes_sent = 0
        self.probe_errors = 0

    def tick(self) -> None:
        now = self.now()
        for change in self.pools.judge(now):
            self._changed(change)
        for target in self.pools.probes_due(now):
            self._probe(target)

    def _probe(self, target: PoolTarget) -> None:
        destination = target.destination
        if destination.transport == "udp":
            sent_by = hostport(*self.endpoint.control)
            destination = destination._replace(local=self.endpoint.control)
        else:
            sent_by = self.sides.sent_by("internal", "tcp", destination.host)
        seq = target.probe_seq
        name = f"{self.worker}-{target.id}-{seq}"
        data = (
            f"OPTIONS {target.uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{destination.transport.upper()} {sent_by};branch={PROBE_BRANCH}"
            f"{name};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:lb@{sent_by}>;tag={self._tag}\r\n"
            f"To: <{target.uri}>\r\n"
            f"Call-ID: lbp-{self._tag}-{name}\r\n"
            f"CSeq: {seq} OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        try:
            self.endpoint.send_bytes(data, destination)
            self.probes_sent += 1
        except TransportError as exc:  # it stays unanswered and counts as a miss
            self.probe_errors += 1
            log.debug("probe of %s not sent: %s", target.uri, exc)

    def answered(self, via: str) -> bool:
        """True when ``via`` (the top Via of a response) is one of our probes."""
        at = via.find(PROBE_BRANCH)
        if at < 0:
            return False
        parts = via[at + len(PROBE_BRANCH) :].split(";", 1)[0].split("-")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and int(parts[0]) == self.worker:
            change = self.pools.answered(int(parts[1]), int(parts[2]))
            if change is not None:
                self._changed(change)
        return True

    def _changed(self, change: HealthChange) -> None:
        target = change.target
        self.changed[target.key] = int(time.time())
        level = logging.WARNING if change.health == "down" else logging.INFO
        log.log(
            level, "%s target %s is %s (%s)", target.pool, target.uri, change.health, change.why
        )
        if self.on_change is not None:
            self.on_change(change)

    def report(self, lb: str) -> list[LbTargetHealth]:
        """This worker's view, for the database: each target, and each target named by
        host as the best of its members (up when one is up)."""
        now = int(time.time())
        views = [
            LbTargetHealth(
                lb, target.pool, target.uri, target.health, self.changed.get(target.key, now), now
            )
            for target in self.pools.targets.values()
        ]
        names: dict[tuple[LbPool, str], list[LbTargetHealth]] = {}
        for target, view in zip(self.pools.targets.values(), views, strict=True):
            if target.source:
                names.setdefault((target.pool, target.source), []).append(view)
        for (pool, uri), members in names.items():
            best = best_health(view.health for view in members)
            changed = max(view.changed for view in members if view.health == best)
            views.append(LbTargetHealth(lb, pool, uri, best, changed, now))
        return views
