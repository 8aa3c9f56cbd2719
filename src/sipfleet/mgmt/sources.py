"""What each role's worker publishes: its plain counters read into metric samples
(names in ``sipfleet.mgmt.metrics.FAMILIES``). Reading costs the worker nothing between
snapshots: every value is an int or list kept where the work is done.

    publisher = start_publishing(config, "lb", index, lb_sources(worker))
"""

from __future__ import annotations

from collections.abc import Mapping

from sipfleet.core import authenticate
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.lb.balancer import Balancer
from sipfleet.core.lb.service import LbWorker
from sipfleet.core.proxy.engine import ProxyEngine
from sipfleet.core.registrar import Registrar
from sipfleet.media.client import MediaRelays
from sipfleet.mgmt.metrics import MetricSources, SlowSamples
from sipfleet.mgmt.snapshots import Samples, Series, Value
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.stats import HistogramTable
from sipfleet.storage import Storage
from sipfleet.storage.timing import STATEMENTS

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx")
MAX_DOMAINS = 100  # per-domain gauges beyond this many are summed under "other"


def _one(value: float) -> Series:
    return {(): value}


def _by(mapping: Mapping[str, int]) -> Series:
    return {(key,): value for key, value in mapping.items()}


def _table(table: HistogramTable) -> Series:
    return {(label,): snapshot for label, snapshot in table.snapshot().items()}


def endpoint_samples(endpoint: SipEndpoint) -> Samples:
    """What every role's endpoint counts: messages by method and class, handling time,
    what it dropped, its TCP connections."""
    stats = endpoint.stats
    responses: Series = {}
    for direction, counts in (
        ("received", endpoint.responses_received_by_class),
        ("sent", endpoint.responses_sent_by_class),
    ):
        for index, name in enumerate(CLASSES, start=1):
            responses[(direction, name)] = counts[index]
    udp = endpoint.udp.counters()
    return {
        "sipfleet_sip_requests_total": _by(endpoint.requests_by_method),
        "sipfleet_sip_responses_total": responses,
        "sipfleet_sip_handling_seconds": {(): endpoint.handling.snapshot()},
        "sipfleet_datagrams_dropped_total": _by(
            {
                "not_sip": stats.garbage_dropped,
                "bad_response": stats.responses_dropped,
                "bad_ack": stats.requests_dropped,
                "send_failed": udp["udp_send_dropped"],
            }
        ),
        "sipfleet_tcp_connections": _one(endpoint.tcp.counters()["tcp_open"]),
    }


def storage_samples(storage: Storage) -> Samples:
    """Statement latency and errors by kind (this process's), queries in flight, and
    the digest failures of this process (registrar and proxy authenticate)."""
    errors: Series = {(kind, error): count for (kind, error), count in STATEMENTS.errors.items()}
    return {
        "sipfleet_db_statement_duration_seconds": _table(STATEMENTS.latency),
        "sipfleet_db_errors_total": errors,
        "sipfleet_db_in_flight": _one(storage.in_flight),
        "sipfleet_auth_failures_total": _by(authenticate.FAILURES),
    }


def _merged(*parts: Samples) -> Samples:
    """Samples of several sources; a name in two adds their label sets together."""
    merged: Samples = {}
    for part in parts:
        for name, values in part.items():
            merged.setdefault(name, {}).update(values)
    return merged


# -- LB --------------------------------------------------------------------------------------


def lb_sources(worker: LbWorker) -> MetricSources:
    def read() -> Samples:
        balancer = worker.endpoint.handler
        assert isinstance(balancer, Balancer)
        return _merged(
            endpoint_samples(worker.endpoint),
            storage_samples(worker.storage),
            _balancer_samples(balancer),
            _pool_samples(worker),
            _tls_samples(worker),
            _websocket_samples(worker),
        )

    return MetricSources(read)


def _balancer_samples(balancer: Balancer) -> Samples:
    kept = balancer.keepalives.table.stats
    forwarded = balancer.forwarder.stats
    return {
        "sipfleet_overload_rejected_total": _by(
            {
                "overload": balancer.shed,
                "registrar_asked": balancer.loss.refused - balancer.loss.refused_own,
                "lb_backlog": balancer.loss.refused_own,
            }
        ),
        "sipfleet_overload_episodes_total": _one(balancer.overload.episodes),
        "sipfleet_datagrams_dropped_total": _by(
            {
                "overload": balancer.shed_dropped,
                "response_not_ours": forwarded.responses_not_ours,
                "response_unroutable": forwarded.responses_unroutable,
            }
        ),
        "sipfleet_lb_refused_routes_total": _one(balancer.refused_tokens),
        **_edge_samples(balancer),
        "sipfleet_keepalive_flows": _one(kept.flows),
        "sipfleet_keepalive_failing": _one(kept.failing),
        "sipfleet_keepalive_pings_total": _one(kept.pings_sent),
        "sipfleet_keepalive_unanswered_total": _one(kept.misses),
    }


def _edge_samples(balancer: Balancer) -> Samples:
    """What the edge guard blocked, by reason, and the lockouts it began."""
    guard = balancer.guard
    if guard is None:
        return {}
    return {
        "sipfleet_edge_blocked_total": _by(
            {
                "rate_dropped": guard.rate_dropped,
                "rate_refused": guard.rate_refused,
                "scanner": guard.scanners_dropped,
                "auth_locked": guard.locked_requests,
            }
        ),
        "sipfleet_edge_lockouts_total": _one(guard.lockouts_started),
        "sipfleet_edge_auth_failures_total": _one(guard.auth_failures),
    }


def _tls_samples(worker: LbWorker) -> Samples:
    """Connections, reloads and the expiry of the certificate served (LB with TLS)."""
    certificates = worker.endpoint.certificates
    if certificates is None:
        return {}
    return {
        "sipfleet_tls_connections_total": _one(worker.endpoint.tcp.stats["tls_accepted"]),
        "sipfleet_tls_reloads_total": _by(
            {"ok": certificates.reloads, "failed": certificates.reload_failures}
        ),
        "sipfleet_tls_certificate_expiry_timestamp_seconds": _one(certificates.current.expires),
    }


def _websocket_samples(worker: LbWorker) -> Samples:
    """WebSocket handshakes (LB with ws: or wss: listeners)."""
    if not any(a.transport in ("ws", "wss") for a in worker.endpoint.addresses):
        return {}
    stats = worker.endpoint.tcp.stats
    handshakes = {"accepted": stats["ws_accepted"], "refused": stats["ws_refused"]}
    return {"sipfleet_websocket_handshakes_total": _by(handshakes)}


def _pool_samples(worker: LbWorker) -> Samples:
    up: Series = {
        (target.pool, target.uri): 1 if target.health == "up" else 0
        for target in worker.pools.targets.values()
    }
    return {"sipfleet_lb_target_up": up}


# -- registrar -----------------------------------------------------------------------------


def registrar_sources(registrar: Registrar, endpoint: SipEndpoint) -> MetricSources:
    def read() -> Samples:
        return _merged(
            endpoint_samples(endpoint),
            storage_samples(registrar.storage),
            {
                "sipfleet_overload_rejected_total": _by(
                    {"overload": registrar.shed, "database_stalled": registrar.refused_stalled}
                ),
                "sipfleet_datagrams_dropped_total": _by({"overload": registrar.dropped}),
                "sipfleet_transaction_duration_seconds": {
                    ("REGISTER",): registrar.register_duration.snapshot()
                },
            },
        )

    return MetricSources(read, slow=registrations_counter(registrar.storage))


def registrations_counter(storage: Storage) -> SlowSamples:
    """The slow source: registrations per domain, one GROUP BY (on a replica if any)."""

    async def count() -> Samples:
        rows = sorted(await storage.location.registrations_by_domain(), key=lambda row: -row.aors)
        aors: Series = {}
        bindings: Series = {}
        for index, row in enumerate(rows):
            # A registrar that accepts any domain must not let phones make up labels.
            domain = row.domain if index < MAX_DOMAINS else "other"
            aors[(domain,)] = _number(aors.get((domain,))) + row.aors
            bindings[(domain,)] = _number(bindings.get((domain,))) + row.bindings
        return {"sipfleet_registered_aors": aors, "sipfleet_bindings": bindings}

    return count


def _number(value: Value | None) -> float:
    return value if isinstance(value, int | float) else 0


# -- proxy ---------------------------------------------------------------------------------


def proxy_sources(
    engine: ProxyEngine, storage: Storage, lcr: LcrRouter | None, relays: MediaRelays | None
) -> MetricSources:
    def read() -> Samples:
        parts = [
            endpoint_samples(engine.endpoint),
            storage_samples(storage),
            _engine_samples(engine),
        ]
        if lcr is not None:
            parts.append(_lcr_samples(lcr))
        if relays is not None:
            parts.append(_relay_samples(relays))
        return _merged(*parts)

    return MetricSources(read)


def _engine_samples(engine: ProxyEngine) -> Samples:
    counters = engine.counters()
    durations = engine.durations.by_label
    samples: Samples = {
        "sipfleet_transactions": _one(counters["transactions"]),
        "sipfleet_calls_active": _one(counters["calls_active"]),
        "sipfleet_overload_rejected_total": _by({"overload": counters["shed"]}),
        "sipfleet_overload_episodes_total": _one(counters["overload_episodes"]),
        "sipfleet_transaction_duration_seconds": {
            (method,): histogram.snapshot() for method, histogram in durations.items()
        },
    }
    if engine.media is not None:
        samples["sipfleet_media_calls_total"] = _by(
            {
                "relayed": counters["media_relayed"],
                "unrelayed": counters["media_unrelayed"],
                "failed": counters["media_failures"],
            }
        )
    if engine.accounting is not None:
        samples["sipfleet_call_records_total"] = _by(
            {
                "written": counters["records_written"],
                "retried": counters["records_retried"],
                "lost": counters["records_lost"],
            }
        )
    return samples


def _lcr_samples(lcr: LcrRouter) -> Samples:
    now = lcr.clock()
    gateways = lcr.cache.table.rows.gateways
    up: Series = {(g.name,): 0 if lcr.health.is_defunct(g.name, now) else 1 for g in gateways}
    return {
        "sipfleet_lcr_gateway_up": up,
        "sipfleet_lcr_failovers_total": _by(lcr.failovers),
    }


def _relay_samples(relays: MediaRelays) -> Samples:
    counters = relays.counters()
    outcomes = {
        "sent": counters["commands"],
        "retransmitted": counters["retransmissions"],
        "timed_out": counters["timeouts"],
        "error": counters["errors"],
        "refused_in_flight": counters["overloaded"],
    }
    return {
        "sipfleet_media_commands_total": _by(outcomes),
        "sipfleet_media_relays_up": _one(counters["relays_up"]),
    }
