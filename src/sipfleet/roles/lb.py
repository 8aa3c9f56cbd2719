"""The LB role: `node.workers` processes sharing the LB's addresses (SO_REUSEPORT), each
a complete LB (core/lb/service.py), each with a private control socket for what the
workers hand each other (TCP connections and keepalive duty live in one worker)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from sipfleet.config import Config
from sipfleet.config.listen import ListenAddress
from sipfleet.core.lb.service import LbWorker, WorkerSockets, sides_of
from sipfleet.roles.common import ready_after, storage_for
from sipfleet.transport.sockets import bind_all, bind_for_workers, keep_only, spread_at_random
from sipfleet.transport.workers import run_workers

log = logging.getLogger(__name__)


async def run(config: Config, *, ready: Callable[[], None] | None = None) -> None:
    """Serve as the LB until cancelled (one worker) or until SIGTERM/SIGINT (several:
    this process supervises them); ``ready()`` once every worker listens."""
    if not config.node.cluster_secret:
        raise ValueError("node.cluster_secret is empty: the LB signs its flow tokens with it")
    sides = sides_of(config)
    workers = config.node.workers
    controls = [_control_socket(config) for _ in range(workers)]
    addresses = {i: _address(sock) for i, sock in enumerate(controls)}
    if workers == 1:
        sockets = bind_all(sides.listen)
        own = WorkerSockets(0, [*sockets, controls[0]], addresses)
        await serve(config, own, 1, ready)
        return
    sets = bind_for_workers(sides.listen, workers)
    if config.lb.spread == "random":
        _spread(sets[0], workers)
    signal_ready = ready_after(workers, ready)

    def worker_main(index: int) -> Coroutine[Any, Any, None]:
        mine = keep_only(sets, index)
        for at, sock in enumerate(controls):
            if at != index:
                sock.close()
        own = WorkerSockets(index, [*mine, controls[index]], addresses)
        return serve(config, own, workers, signal_ready)

    # This process only supervises from here on: its loop waits while the workers run.
    status = run_workers(worker_main, workers)
    if status != 0:
        raise RuntimeError("LB workers keep dying; see the log above")


async def serve(
    config: Config, own: WorkerSockets, workers: int, ready: Callable[[], None] | None
) -> None:
    async with storage_for(config) as storage:
        await LbWorker(config, storage, own, workers).run(ready)


def _spread(first: list[socket.socket], workers: int) -> None:
    """Deal each UDP address's datagrams to the workers at random (see lb.spread)."""
    for sock in first:
        if sock.type == socket.SOCK_DGRAM:
            try:
                spread_at_random(sock, workers)
            except OSError as exc:  # an old kernel: the address hash it is
                log.warning("lb.spread = random not available (%s): spreading by address", exc)
                return


def _control_socket(config: Config) -> socket.socket:
    """A UDP socket on the internal address, any port: the worker's own."""
    internal = sides_of(config).address("internal", "udp", "")
    return bind_all([ListenAddress("udp", internal.host, 0)])[0]


def _address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)
