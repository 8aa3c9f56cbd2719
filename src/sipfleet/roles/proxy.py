"""The proxy role: the stateful proxy engine on ``[proxy] listen``, the operator's routing
policy, the location table read from the read DSN.

With ``node.workers`` above 1 the supervisor binds the addresses once per worker
(SO_REUSEPORT, datagrams dealt by address hash), makes each worker a private inbox and
forks them. Each message belongs to the worker its Call-ID hashes to (``transport/steering.py``):
a worker hands what it does not own to the owner unparsed, so a transaction's
retransmissions, CANCEL, ACK and responses, and its dialog's requests, all meet the
worker that holds it. A TCP connection stays in the worker that has it; what another
worker sends on it goes through that one (``transport/inboxes.py``)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sipfleet.config import Config
from sipfleet.core.endpoint import CONNECTION_IDS_PER_WORKER, SipEndpoint
from sipfleet.core.overload import receive_backlog
from sipfleet.core.proxy.accounting import CallAccounting
from sipfleet.core.proxy.engine import ProxyEngine, settings_from_config
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.media_control import MediaControl
from sipfleet.core.proxy.plans import Planner
from sipfleet.core.proxy.privacy_hooks import PrivacyHooks
from sipfleet.core.proxy.services import ProxyServices
from sipfleet.media.client import MediaRelays
from sipfleet.mgmt.log_level import following_log_level
from sipfleet.mgmt.metrics import publishing
from sipfleet.mgmt.server import Listener
from sipfleet.mgmt.sources import proxy_sources
from sipfleet.mgmt.view import RoleView
from sipfleet.roles.common import (
    authority_for,
    collect_garbage,
    management,
    only_worker_zero,
    ready_after,
    serve_until_cancelled,
    storage_for,
)
from sipfleet.routing.api import OffNetRouter, load_policy
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.storage import Storage
from sipfleet.storage.batch import ReadBatcher
from sipfleet.storage.errors import StorageError
from sipfleet.transport.base import TransportLimits
from sipfleet.transport.inboxes import WorkerSteering, make_inboxes
from sipfleet.transport.sockets import bind_all, bind_for_workers, keep_only
from sipfleet.transport.workers import run_workers

log = logging.getLogger(__name__)
# few transactions kept: a full garbage collection walks little (roles/collector.py)
QUIET = 1_000
GIL_SWITCH_INTERVAL_S = 0.0005
RECORDS_AT_STOP_S = 5.0  # call records still queued get this long to reach the database
Backlog = Callable[[], int]


def build_engine(
    config: Config,
    storage: Storage,
    endpoint: SipEndpoint,
    *,
    off_net: OffNetRouter | None = None,
    sockets: Sequence[socket.socket] = (),
    hooks: MessageHooks = NO_HOOKS,
    steering: WorkerSteering | None = None,
    relays: MediaRelays | None = None,
) -> ProxyEngine:
    """The engine for ``config``; it hears of ``endpoint``'s late send failures, but is
    not yet its handler. ``sockets``: the endpoint's bound sockets, watched for overload
    with what other workers handed this one (``steering``)."""
    section = config.proxy
    policy = load_policy(section.policy, config)
    services = ProxyServices(
        storage,
        authority_for(config),
        domains=config.sip.domains,
        trusted_peers=section.trusted_peers,
        realm=section.realm,
    )
    planner = Planner(storage, serial_forking=section.serial_forking, off_net=off_net)
    settings = settings_from_config(config)
    backlog = _backlog(sockets, steering)
    engine = ProxyEngine(
        endpoint,
        policy,
        planner,
        services,
        settings,
        hooks=hooks,
        backlog=backlog,
        dialog_tokens=DialogTokens(config.node.cluster_secret.encode()),
        media=_media_control(config, relays),
        accounting=(
            CallAccounting(storage.accounting, config.node.name)
            if config.accounting.enabled
            else None
        ),
    )
    endpoint.on_send_error = engine.destination_failed
    return engine


def _media_control(config: Config, relays: MediaRelays | None) -> MediaControl | None:
    if relays is None or config.media.mode == "never" or not config.media.relays:
        return None
    control = MediaControl(relays, config.media.mode)
    control.names = tuple(relay.name for relay in relays.relays)
    return control


def media_relays(config: Config) -> MediaRelays | None:
    """The configured rtpengine relays (None: media always goes direct)."""
    section = config.media
    if section.mode == "never" or not section.relays:
        return None
    return MediaRelays(
        section.relays, timeout_s=section.timeout_s, ping_interval_s=section.ping_interval_s
    )


def _backlog(sockets: Sequence[socket.socket], steering: WorkerSteering | None) -> Backlog:
    in_sockets = receive_backlog(sockets)
    if steering is None:
        return in_sockets
    in_inbox = steering.backlog
    return lambda: in_sockets() + in_inbox()


async def _write_what_is_left(accounting: CallAccounting) -> None:
    try:
        async with asyncio.timeout(RECORDS_AT_STOP_S):
            await accounting.drain()
    except TimeoutError:
        accounting.abandon()  # logged whole


async def follow_proxy_pool(storage: Storage, engine: ProxyEngine, interval: float) -> None:
    """Keep the engine's idea of its siblings in step with the LB's proxy pool, so any
    proxy continues a dialog another one Record-Routed (that one may be gone)."""
    known: list[str] | None = None
    while True:
        try:
            targets = [t.uri for t in await storage.lb_targets.list_all("proxy")]
        except StorageError as exc:
            log.debug("proxy pool not read: %s", exc)
        else:
            uris = await engine.resolver.pool_uris(targets)  # names: their addresses
            if uris != known:
                engine.adopt_siblings(uris)
                known = uris
        await asyncio.sleep(interval)


async def run(
    config: Config, *, ready: Callable[[], None] | None = None, mgmt: Listener | None = None
) -> None:
    """Serve as the proxy until cancelled (one worker) or until SIGTERM/SIGINT (several:
    this process supervises them); ``ready()`` once every worker listens. Worker 0 serves
    the management API on ``mgmt``."""
    workers = config.node.workers
    if workers == 1:
        await serve(config, None, None, ready, mgmt)
        return
    buffer_size = TransportLimits.from_config(config.sip).socket_buffer
    sets = bind_for_workers(config.proxy.listen, workers, buffer_size=buffer_size)
    # Datagrams are dealt by the kernel's hash of their addresses, not at random: all
    # that one sender sends then passes through one worker, which hands what it does not
    # own to the owner in order (ACK before BYE). Dealt at random, an ACK handed over
    # could reach its owner after the BYE sent right behind it had come in directly:
    # 11 % of calls at 900/s in bench/call_bench.py. The work is spread by Call-ID
    # all the same; a worker that receives for a busy sender (an LB) only hands on.
    inboxes = make_inboxes(workers)
    signal_ready = ready_after(workers, ready)

    def worker_main(index: int) -> Coroutine[Any, Any, None]:
        steering = WorkerSteering.in_worker(index, inboxes, CONNECTION_IDS_PER_WORKER)
        return serve(
            config, keep_only(sets, index), steering, signal_ready, only_worker_zero(mgmt, index)
        )

    # This process only supervises from here on: its loop waits while the workers run.
    if run_workers(worker_main, workers) != 0:
        raise RuntimeError("proxy workers keep dying; see the log above")


async def serve(
    config: Config,
    sockets: Sequence[socket.socket] | None,
    steering: WorkerSteering | None,
    ready: Callable[[], None] | None,
    mgmt: Listener | None = None,
) -> None:
    """One proxy process: its endpoint (on ``sockets``, or bound here), its storage, and
    with several workers its ``steering`` (each Call-ID's messages to one worker); the
    management API on ``mgmt`` (worker 0's).

    Every worker runs every background duty for itself, since each holds its own state:
    the garbage collector (its own heap), the proxy pool (its engine's siblings), the LCR
    tables and gateway health (the trunks it tried; it probes the gateways it found
    defunct, with Call-IDs it owns so the answers come back to it). None writes shared
    state, so none needs to be worker 0's alone."""
    # The SQLite backend runs queries on a thread. With the default 5 ms GIL switch
    # interval a busy event loop lets that thread in only every 5 ms, and lookups
    # pile up to the in-flight cap (seen at 1,000 calls/s); 0.5 ms keeps them flowing.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    limits = TransportLimits.from_config(config.sip)
    if sockets is None:
        sockets = bind_all(config.proxy.listen, buffer_size=limits.socket_buffer)
    index = steering.index if steering is not None else 0
    async with storage_for(config) as storage:
        endpoint = SipEndpoint(
            config.proxy.listen, limits=limits, sockets=sockets, worker_index=index
        )
        lcr = LcrRouter.from_config(config, storage.lcr)
        relays = media_relays(config)
        if relays is not None:
            await relays.start()  # pinged once: calls find the relays that answered
        # caller privacy (DESIGN §4); LCR gateways flagged trusted see the caller
        hooks = PrivacyHooks.from_config(config, lambda: lcr.cache.table.rows.gateways)
        engine = build_engine(
            config,
            storage,
            endpoint,
            sockets=sockets,
            off_net=lcr,
            hooks=hooks,
            steering=steering,
            relays=relays,
        )
        if steering is not None:
            endpoint.steering = steering
            engine.prober.owns_call_id = steering.owns_call_id
        await lcr.start(engine.prober)  # the LCR tables loaded before the first call
        endpoint.handler = engine
        collector = asyncio.create_task(collect_garbage(lambda: len(engine.core.layer) < QUIET))
        siblings = asyncio.create_task(
            follow_proxy_pool(storage, engine, config.proxy.pool_reload_s)
        )
        duties = [collector, siblings]
        accounting = engine.accounting
        if accounting is not None:
            duties.append(asyncio.create_task(accounting.run()))  # each worker its records
        if accounting is not None and index == 0:  # one sweep per process is plenty
            section = config.accounting
            sweep = accounting.sweep(section.max_call_s, section.sweep_interval_s)
            duties.append(asyncio.create_task(sweep))

        view = RoleView(
            "proxy",
            config,
            storage,
            [str(address) for address in config.proxy.listen],
            counters=lambda: {**endpoint.counters(), **engine.counters()},
            lcr=lcr,
        )

        def listening() -> None:  # handoffs wait in the inbox until the endpoint listens
            if steering is not None:
                steering.start(endpoint)
            view.listening = True
            if ready is not None:
                ready()

        try:
            metrics = publishing(
                config, "proxy", index, proxy_sources(engine, storage, lcr, relays)
            )
            async with management(view, mgmt), metrics, following_log_level(config, "proxy"):
                await serve_until_cancelled(endpoint, listening)
        finally:
            if steering is not None:
                steering.close()
            if accounting is not None:  # the records of the last calls, while storage is open
                await _write_what_is_left(accounting)
            for duty in duties:
                duty.cancel()
            await lcr.close()
            await engine.close()
            if relays is not None:
                await relays.close()
            _log_lookups(storage)


def _log_lookups(storage: Storage) -> None:
    """How well this process's location lookups grouped into statements, for the operator
    (and the benchmarks, which read it from the log)."""
    reads = getattr(storage.location, "routes", None)  # SqlLocation's batcher, when batching
    if isinstance(reads, ReadBatcher) and reads.batches:
        log.info(
            "location lookups: %d in %d statements, %.2f a statement",
            reads.reads,
            reads.batches,
            reads.reads / reads.batches,
        )
