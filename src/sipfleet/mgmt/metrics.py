"""Prometheus metrics of a role, correct with any number of worker processes.

The counting itself is plain ints and lists where the work happens (the endpoint, the
balancer, the registrar, the engine, storage): nothing of prometheus_client runs on the
path of a message. Each worker process publishes what it counted once a second as a
snapshot file (``mgmt/snapshots.py``) under

    <node.data_dir>/run/metrics/<role>-<first listen address>/<worker index>.json

and the process that answers ``/metrics`` (worker 0) sums every worker's file and hands
the totals to prometheus_client as a custom collector, which formats them.

- Counters and histograms of every file are summed, including a worker's that stopped
  writing (it died: its counts happened all the same, and Prometheus must not see them
  vanish). A restarted worker reads its own last snapshot and counts on from it.
- Gauges (transactions now, targets up) come from fresh files only (written within
  ``STALE_AFTER_S``), combined by sum, or by min for "is it up" (up only if every worker
  sees it up).

    async with publishing(config, "lb", worker_index, lb_sources(worker)):
        ...                                       # then one last snapshot
    body, content_type = render(config, "lb")     # the answer to GET /metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sipfleet.config import Config
from sipfleet.mgmt import snapshots
from sipfleet.mgmt.snapshots import Samples, Snapshot, Value

log = logging.getLogger(__name__)

ROLES = ("lb", "registrar", "proxy")
PUBLISH_INTERVAL_S = 1.0
SLOW_INTERVAL_S = 30.0  # the SQL counts (registrations per domain) are this old at most
STALE_AFTER_S = 5.0
VERSION = importlib.metadata.version("sipfleet")
# Every name and label here is of the classic character set, so the body is the text
# format 0.0.4 that every Prometheus reads (newer clients announce 1.0.0 by default).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricKind = Literal["counter", "gauge", "histogram"]
Combine = Literal["sum", "min"]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    combine: Combine = "sum"  # gauges across workers


def _counter(name: str, help: str, *labels: str) -> Family:
    return Family(name, "counter", help, labels)


def _gauge(name: str, help: str, *labels: str, combine: Combine = "sum") -> Family:
    return Family(name, "gauge", help, labels, combine)


def _histogram(name: str, help: str, *labels: str) -> Family:
    return Family(name, "histogram", help, labels)


# Every metric a role may publish; docs/operations.md "Metrics" says the same. Each also
# gets a ``role`` label. No label takes a value a sender chose: methods outside
# COUNTED_METHODS are "other", the rest (pools, targets, gateways, domains, kinds) come
# from the configuration, the database or the code.
FAMILIES: tuple[Family, ...] = (
    _counter("sipfleet_sip_requests_total", "SIP requests received, by method.", "method"),
    _counter(
        "sipfleet_sip_responses_total",
        "SIP responses received and sent, by status class.",
        "direction",
        "class",
    ),
    _histogram(
        "sipfleet_sip_handling_seconds",
        "Time from a message's arrival to its handler's return (the LB: the whole relay, "
        "sent included); one message in 16.",
    ),
    _histogram(
        "sipfleet_transaction_duration_seconds",
        "Time from a request's arrival to its final answer (registrar: REGISTER).",
        "method",
    ),
    _gauge("sipfleet_transactions", "Proxy transactions kept now (waiting timers included)."),
    _gauge("sipfleet_calls_active", "INVITE transactions in progress now."),
    _counter(
        "sipfleet_overload_rejected_total",
        "New requests answered 503 because the process was overloaded or its database stalled.",
        "reason",
    ),
    _counter("sipfleet_datagrams_dropped_total", "Messages dropped without an answer.", "reason"),
    _counter("sipfleet_overload_episodes_total", "Times the process became overloaded."),
    _gauge("sipfleet_tcp_connections", "TCP connections open now."),
    _counter(
        "sipfleet_tls_connections_total", "TLS connections accepted (handshake done; WSS too)."
    ),
    _counter(
        "sipfleet_websocket_handshakes_total",
        "WebSocket handshakes on ws: and wss: listeners, by result: accepted, or refused "
        "(no 'sip' subprotocol, not a WebSocket).",
        "result",
    ),
    _counter("sipfleet_tls_reloads_total", "TLS certificate reloads, by result.", "result"),
    _gauge(
        "sipfleet_tls_certificate_expiry_timestamp_seconds",
        "When the certificate new TLS connections get stops being valid (Unix time).",
        combine="min",
    ),
    _histogram(
        "sipfleet_db_statement_duration_seconds",
        "Time a storage operation took, as its caller waited, by kind.",
        "kind",
    ),
    _counter(
        "sipfleet_db_errors_total",
        "Storage operations the database failed (unavailable, overloaded) and the "
        "conflicts it rolled back (conflict; retried).",
        "kind",
        "error",
    ),
    _gauge("sipfleet_db_in_flight", "Storage operations running or waiting now."),
    _counter(
        "sipfleet_auth_failures_total",
        "Digest credentials refused: rejected (wrong, unknown user, replay) or stale nonce.",
        "reason",
    ),
    _gauge(
        "sipfleet_lb_target_up",
        "1 when the LB's health checks find the target up (every worker).",
        "pool",
        "target",
        combine="min",
    ),
    _counter(
        "sipfleet_lb_refused_routes_total",
        "Requests refused for a bad flow token or a Route the cluster did not make.",
    ),
    _counter(
        "sipfleet_edge_blocked_total",
        "Requests the LB's edge guard blocked: over a source's rate (dropped over UDP, "
        "refused 503 over TCP), a scanner's User-Agent, credentials of a locked-out "
        "(user, source) taken off.",
        "reason",
    ),
    _counter("sipfleet_edge_lockouts_total", "Lockouts of a (user, source) pair begun."),
    _counter(
        "sipfleet_edge_auth_failures_total", "Wrong digest answers the LB saw the cluster refuse."
    ),
    _gauge("sipfleet_keepalive_flows", "Client flows the LB keeps alive now."),
    _gauge("sipfleet_keepalive_failing", "Kept flows whose last ping went unanswered."),
    _counter("sipfleet_keepalive_pings_total", "Keepalive pings sent."),
    _counter("sipfleet_keepalive_unanswered_total", "Keepalive pings not answered in time."),
    _gauge(
        "sipfleet_registered_aors",
        "Addresses of record with an unexpired binding (SQL, at most 30 s old).",
        "domain",
        combine="min",
    ),
    _gauge(
        "sipfleet_bindings",
        "Unexpired bindings (SQL, at most 30 s old).",
        "domain",
        combine="min",
    ),
    _gauge(
        "sipfleet_lcr_gateway_up",
        "1 unless a worker of the proxy found the LCR gateway defunct.",
        "gateway",
        combine="min",
    ),
    _counter(
        "sipfleet_lcr_failovers_total",
        "Call attempts on an LCR gateway that failed (the call goes on to its next trunk).",
        "gateway",
    ),
    _counter(
        "sipfleet_media_calls_total",
        "Calls that wanted the media relay: relayed, unrelayed (no relay up), failed.",
        "outcome",
    ),
    _counter(
        "sipfleet_media_commands_total", "ng commands sent to media relays, by outcome.", "outcome"
    ),
    _gauge("sipfleet_media_relays_up", "Media relays answering pings.", combine="min"),
    _counter("sipfleet_call_records_total", "Call record writes: written or lost.", "outcome"),
)
BY_NAME = {family.name: family for family in FAMILIES}
TOTALLED = [family.name for family in FAMILIES if family.kind != "gauge"]
GAUGES = [family for family in FAMILIES if family.kind == "gauge"]


# -- where snapshots live ------------------------------------------------------------------


def snapshot_dir(config: Config, role: str) -> Path:
    """The directory of one role instance's snapshots. ``sipfleet up`` may run several
    instances of a role with one data directory: they differ in their first address."""
    if role not in ROLES:
        raise ValueError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    first = getattr(config, role).listen[0]
    where = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{first.transport}-{first.host}-{first.port}")
    return config.node.data_dir / "run" / "metrics" / f"{role}-{where}"


# -- publishing (every worker) --------------------------------------------------------------

SlowSamples = Callable[[], Awaitable[Samples]]


@dataclass(frozen=True, slots=True)
class MetricSources:
    """What a worker counts: ``read`` every second; ``slow`` (SQL) every 30 s, in
    worker 0 only (it counts the whole cluster's rows, not this worker's work)."""

    read: Callable[[], Samples]
    slow: SlowSamples | None = None


class Publisher:
    def __init__(self, path: Path | None, sources: MetricSources, *, run_slow: bool) -> None:
        """``path`` None: metrics are off, nothing is written."""
        self.path = path
        self.sources = sources
        self.run_slow = run_slow and sources.slow is not None
        self.base: Samples = self._previous()
        self.slow: Samples = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def _previous(self) -> Samples:
        """The totals of this worker's last life: counted on from, never lost."""
        found = snapshots.read(self.path) if self.path is not None else None
        base: Samples = {}
        if found is not None:
            snapshots.add_into(base, found.samples, TOTALLED)
        return base

    def start(self) -> None:
        if self.path is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self.publish()

    def samples(self) -> Samples:
        """Now: this life's counts on top of the last life's, the slow ones as of late."""
        now = self.sources.read()
        total: Samples = {}
        snapshots.add_into(total, self.base, TOTALLED)
        snapshots.add_into(total, now, TOTALLED)
        for family in GAUGES:
            if family.name in now:
                total[family.name] = now[family.name]
        total.update(self.slow)
        return total

    def publish(self) -> None:
        if self.path is None:
            return
        try:
            snapshots.write(self.path, self.samples(), time.time())
        except OSError as exc:
            if not self._failing:
                log.warning("metrics snapshot %s not written: %s", self.path, exc)
            self._failing = True
        else:
            self._failing = False

    async def _run(self) -> None:
        slow_due = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if self.run_slow and loop.time() >= slow_due:
                slow_due = loop.time() + SLOW_INTERVAL_S
                await self._refresh_slow()
            self.publish()
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def _refresh_slow(self) -> None:
        assert self.sources.slow is not None
        try:
            self.slow = await self.sources.slow()
        except Exception as exc:  # a database that does not answer: keep the last ones
            log.debug("metrics from the database not refreshed: %s", exc)


def start_publishing(
    config: Config, role: str, worker_index: int, sources: MetricSources
) -> Publisher:
    """Publish this worker's counts every second from now on (nothing when
    ``mgmt.metrics`` is off); ``await publisher.stop()`` writes the last ones."""
    path = None
    if config.mgmt.metrics:
        path = snapshot_dir(config, role) / f"{worker_index}.json"
    publisher = Publisher(path, sources, run_slow=worker_index == 0)
    publisher.start()
    return publisher


@contextlib.asynccontextmanager
async def publishing(
    config: Config, role: str, worker_index: int, sources: MetricSources
) -> AsyncIterator[Publisher]:
    """``start_publishing`` for the time of the block; the last snapshot when it ends."""
    publisher = start_publishing(config, role, worker_index, sources)
    try:
        yield publisher
    finally:
        await publisher.stop()


# -- serving (the process that answers /metrics) ------------------------------------------


def aggregate(found: list[Snapshot], now: float) -> Samples:
    """Every worker's totals summed; gauges of the fresh snapshots combined."""
    total: Samples = {}
    for snapshot in found:
        snapshots.add_into(total, snapshot.samples, TOTALLED)
    fresh = [s for s in found if now - s.time <= STALE_AFTER_S]
    for family in GAUGES:
        combined: dict[tuple[str, ...], Value] = {}
        for snapshot in fresh:
            for labels, value in snapshot.samples.get(family.name, {}).items():
                if isinstance(value, dict):
                    continue
                there = combined.get(labels)
                if there is None or isinstance(there, dict):
                    combined[labels] = value
                elif family.combine == "min":
                    combined[labels] = min(there, value)
                else:
                    combined[labels] = there + value
        if combined:
            total[family.name] = combined
    return total


class SnapshotCollector(Collector):
    """The summed snapshots as Prometheus metric families, each with the ``role`` label."""

    def __init__(self, totals: Samples, role: str, node: str) -> None:
        self.totals = totals
        self.role = role
        self.node = node

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "sipfleet_info",
            "This role's node and version (always 1).",
            labels=["role", "node", "version"],
        )
        info.add_metric([self.role, self.node, VERSION], 1)
        yield info
        for family in FAMILIES:
            samples = self.totals.get(family.name)
            if samples:
                yield self._family(family, samples)

    def _family(self, family: Family, samples: dict[tuple[str, ...], Value]) -> Metric:
        labels = ["role", *family.labels]
        metric: Any
        if family.kind == "counter":
            metric = CounterMetricFamily(family.name, family.help, labels=labels)
        elif family.kind == "gauge":
            metric = GaugeMetricFamily(family.name, family.help, labels=labels)
        else:
            metric = HistogramMetricFamily(family.name, family.help, labels=labels)
        for values, value in sorted(samples.items()):
            if len(values) != len(family.labels):
                continue  # written by another version with other labels
            key = [self.role, *values]
            if isinstance(value, dict):
                if family.kind == "histogram":
                    buckets, total = _buckets(value)
                    metric.add_metric(key, buckets, total)
            elif family.kind != "histogram":
                metric.add_metric(key, value)
        return metric  # type: ignore[no-any-return]


def _buckets(histogram: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """Prometheus' cumulative buckets (``le`` inclusive, then ``+Inf``) and the sum."""
    bounds = [float(bound) for bound in histogram["bounds"]]
    running = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*bounds, float("inf")], histogram["counts"], strict=True):
        running += int(count)
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets, float(histogram["sum"])


def render(config: Config, role: str) -> tuple[bytes, str]:
    """The whole answer to ``GET /metrics`` for ``role`` of this node: (body, content
    type). ``ValueError`` for a role that is not one."""
    totals = aggregate(snapshots.read_all(snapshot_dir(config, role)), time.time())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(totals, role, config.node.name))
    return generate_latest(registry), CONTENT_TYPE
