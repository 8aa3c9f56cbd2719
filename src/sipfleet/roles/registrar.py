"""The registrar role: REGISTER in, bindings written to SQL, expired ones purged.

The registrar keeps nothing between requests, so ``node.workers`` processes simply share
its addresses (SO_REUSEPORT, datagrams dealt at random: the LBs in front are few, and an
address hash would give each LB's traffic to one worker). Worker 0 purges expired rows.
Garbage: generation 0 only, full sweeps when quiet (``collect_garbage``, roles/collector.py). The
registrar reads how much waits unread in its UDP sockets to shed overload (core/registrar.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sipfleet.config import Config
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.overload import receive_backlog
from sipfleet.core.registrar import Registrar
from sipfleet.mgmt.log_level import following_log_level
from sipfleet.mgmt.metrics import publishing
from sipfleet.mgmt.server import Listener
from sipfleet.mgmt.sources import registrar_sources
from sipfleet.mgmt.view import RoleView
from sipfleet.roles.common import (
    collect_garbage,
    listening,
    management,
    only_worker_zero,
    ready_after,
    serve_until_cancelled,
    storage_for,
)
from sipfleet.storage.expiry import purge_expired_forever
from sipfleet.transport.sockets import bind_all, bind_for_workers, keep_only, spread_at_random
from sipfleet.transport.workers import run_workers

log = logging.getLogger(__name__)


async def run(
    config: Config, *, ready: Callable[[], None] | None = None, mgmt: Listener | None = None
) -> None:
    """Serve REGISTER on config.registrar.listen until cancelled (one worker) or until
    SIGTERM/SIGINT (several: this process supervises them); worker 0 serves ``mgmt``."""
    workers = config.node.workers
    if workers == 1:
        await serve(config, None, ready, purge=True, mgmt=mgmt)
        return
    sets = bind_for_workers(config.registrar.listen, workers)
    for sock in sets[0]:
        if sock.type == socket.SOCK_DGRAM:
            try:
                spread_at_random(sock, workers)
            except OSError as exc:  # an old kernel: the address hash it is
                log.warning("registrar: datagrams spread by address, not at random: %s", exc)
    signal_ready = ready_after(workers, ready)

    def worker_main(index: int) -> Coroutine[Any, Any, None]:
        return serve(
            config,
            keep_only(sets, index),
            signal_ready,
            purge=index == 0,
            mgmt=only_worker_zero(mgmt, index),
            worker=index,
        )

    # This process only supervises from here on: its loop waits while the workers run.
    if run_workers(worker_main, workers) != 0:
        raise RuntimeError("registrar workers keep dying; see the log above")


async def serve(
    config: Config,
    sockets: Sequence[socket.socket] | None,
    ready: Callable[[], None] | None,
    *,
    purge: bool,
    mgmt: Listener | None = None,
    worker: int = 0,
) -> None:
    """One registrar process: its endpoint (on ``sockets``, or bound here), its storage,
    the management API on ``mgmt``."""
    sockets = list(sockets) if sockets is not None else bind_all(config.registrar.listen)
    async with storage_for(config) as storage:
        endpoint = SipEndpoint(config.registrar.listen, sockets=sockets)
        registrar = Registrar(config, storage, endpoint, backlog=receive_backlog(sockets))
        endpoint.handler = registrar
        background = [asyncio.create_task(collect_garbage())]
        if purge:
            interval = config.registrar.purge_interval_s
            background.append(
                asyncio.create_task(purge_expired_forever(storage.location, interval))
            )
        view = RoleView(
            "registrar",
            config,
            storage,
            [str(address) for address in config.registrar.listen],
            counters=lambda: counters(registrar, endpoint),
        )
        try:
            metrics = publishing(
                config, "registrar", worker, registrar_sources(registrar, endpoint)
            )
            async with management(view, mgmt), metrics, following_log_level(config, "registrar"):
                await serve_until_cancelled(endpoint, listening(view, ready))
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            _log_counters(registrar)


def counters(registrar: Registrar, endpoint: SipEndpoint) -> dict[str, int]:
    """What the status shows: the endpoint's traffic, shedding, storage stalls."""
    return {
        **endpoint.counters(),
        "shed": registrar.shed,
        "dropped": registrar.dropped,
        "refused_stalled": registrar.refused_stalled,
        "storage_stalls": registrar.stall.stalls,
    }


def _log_counters(registrar: Registrar) -> None:
    """What overload and storage stalls cost this process, for the operator (and the
    benchmarks, which read it from the log)."""
    brief, kept = registrar.answered.kept
    log.info(
        "registrar: %d answered 503 under overload, %d dropped past the answer budget, "
        "%d answered 503 while the database did not answer (%d stalls); %d + %d answers kept",
        registrar.shed,
        registrar.dropped,
        registrar.refused_stalled,
        registrar.stall.stalls,
        brief,
        kept,
    )
