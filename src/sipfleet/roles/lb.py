"""The LB role: `node.workers` processes sharing the LB's addresses (SO_REUSEPORT), each
a complete LB composed here from core/lb/ (sides, pools, router, health checks,
keepalives, balancer; core/lb/service.py runs it), each with a private control socket for
what the workers hand each other (TCP connections and keepalive duty live in one worker)."""

from __future__ import annotations

import asyncio
import logging
import socket
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipfleet.config import Config
from sipfleet.config.listen import ListenAddress
from sipfleet.config.model import parse_hostport
from sipfleet.core.lb.balancer import Balancer
from sipfleet.core.lb.edge import EdgeGuard
from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.core.lb.pinger import Keepalives
from sipfleet.core.lb.pools import Pools
from sipfleet.core.lb.probes import HealthChecker
from sipfleet.core.lb.router import Router
from sipfleet.core.lb.service import LbWorker
from sipfleet.core.lb.sides import Sides
from sipfleet.core.overload import OverloadMonitor, receive_backlog
from sipfleet.core.stateless import StatelessForwarder
from sipfleet.mgmt.log_level import following_log_level
from sipfleet.mgmt.metrics import publishing
from sipfleet.mgmt.server import Listener
from sipfleet.mgmt.sources import lb_sources
from sipfleet.mgmt.view import RoleView
from sipfleet.roles.common import listening, management, only_worker_zero, ready_after, storage_for
from sipfleet.sip.flow import FlowTokens
from sipfleet.storage import Storage
from sipfleet.transport.base import TransportLimits
from sipfleet.transport.sockets import bind_all, bind_for_workers, keep_only, spread_at_random
from sipfleet.transport.tls import TlsCertificates, reloading
from sipfleet.transport.workers import run_workers

log = logging.getLogger(__name__)


async def run(
    config: Config, *, ready: Callable[[], None] | None = None, mgmt: Listener | None = None
) -> None:
    """Serve as the LB until cancelled (one worker) or until SIGTERM/SIGINT (several:
    this process supervises them); ``ready()`` once every worker listens. Worker 0 serves
    the management API on ``mgmt``."""
    if not config.node.cluster_secret:
        raise ValueError("node.cluster_secret is empty: the LB signs its flow tokens with it")
    sides = sides_of(config)
    certificates = certificates_of(config)  # a bad file stops the start, naming its key
    workers = config.node.workers
    controls = [_control_socket(config) for _ in range(workers)]
    addresses = {i: _address(sock) for i, sock in enumerate(controls)}
    if workers == 1:
        sockets = bind_all(sides.listen)
        own = WorkerSockets(0, [*sockets, controls[0]], addresses, certificates)
        await serve(config, own, 1, ready, mgmt)
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
        own = WorkerSockets(index, [*mine, controls[index]], addresses, certificates)
        return serve(config, own, workers, signal_ready, only_worker_zero(mgmt, index))

    # This process only supervises from here on: its loop waits while the workers run.
    status = run_workers(worker_main, workers)
    if status != 0:
        raise RuntimeError("LB workers keep dying; see the log above")


@dataclass(frozen=True, slots=True)
class WorkerSockets:
    index: int
    sockets: list[socket.socket]  # the worker's listening sockets, then its control socket
    controls: dict[int, tuple[str, int]]  # every worker's control socket address
    # the tls: listeners' certificate, loaded before the fork; each worker reloads its own
    certificates: TlsCertificates | None = None


async def serve(
    config: Config,
    own: WorkerSockets,
    workers: int,
    ready: Callable[[], None] | None,
    mgmt: Listener | None = None,
) -> None:
    async with storage_for(config) as storage:
        worker = compose(config, storage, own, workers)
        balancer = worker.endpoint.handler
        assert isinstance(balancer, Balancer)
        view = RoleView(
            "lb",
            config,
            storage,
            [str(address) for address in sides_of(config).listen],
            counters=balancer.counters,
            pools=worker.pools,
            tls=own.certificates,
        )
        metrics = publishing(config, "lb", own.index, lb_sources(worker))
        async with (
            management(view, mgmt),
            metrics,
            following_log_level(config, "lb"),
            reloading(own.certificates),
        ):
            await worker.run(listening(view, ready))


def compose(config: Config, storage: Storage, own: WorkerSockets, workers: int) -> LbWorker:
    """One worker's LB: its parts built from ``config`` and wired to each other (call
    within the running loop: the health checks and keepalives read its clock)."""
    section = config.lb
    now = asyncio.get_running_loop().time
    sides = sides_of(config)
    tokens = FlowTokens(config.node.cluster_secret.encode())
    lb_id = lb_id_of(config, sides)
    pools = Pools(section.probe_interval_s)
    endpoint = LbEndpoint(
        sides.listen,
        sockets=own.sockets,
        control=own.controls[own.index],
        siblings=own.controls,
        worker_index=own.index,
        limits=TransportLimits.from_config(config.sip),
        certificates=own.certificates,
    )
    router = Router(
        sides,
        tokens,
        pools,
        lb_id=lb_id,
        worker=own.index,
        has_connection=endpoint.has_connection,
    )
    health = HealthChecker(endpoint, pools, sides, now)
    keepalives = Keepalives(
        endpoint,
        sides,
        tokens,
        lb_id=lb_id,
        workers=workers,
        interval=section.keepalive_interval_s,
        method=section.keepalive_method,
        enabled=section.keepalive,
        now=now,
    )
    forwarder = StatelessForwarder(
        endpoint, force_rport=section.force_rport, advertised=sides.advertised_sent_bys()
    )
    overload = OverloadMonitor()
    exempt = [*config.edge.exempt, *config.proxy.trusted_peers]
    guard = EdgeGuard(config.edge, router, exempt)
    balancer = Balancer(endpoint, router, forwarder, health, keepalives, tokens, overload, guard)
    endpoint.handler = balancer
    return LbWorker(
        storage,
        endpoint,
        pools,
        health,
        keepalives,
        node=config.node.name,
        pool_reload_s=section.pool_reload_s,
        observe=balancer.observe,
        gateways=guard.exempt_gateways,
        backlog=receive_backlog(own.sockets),
    )


def certificates_of(config: Config) -> TlsCertificates | None:
    """The tls: and wss: listeners' certificate and key (TlsFileError naming the key when
    a file does not serve); None without such a listener."""
    if not any(address.transport in ("tls", "wss") for address in config.lb.listen):
        return None
    return TlsCertificates(Path(config.lb.tls_certificate), Path(config.lb.tls_key))


def sides_of(config: Config) -> Sides:
    advertise = parse_hostport(config.lb.advertise) if config.lb.advertise else None
    return Sides(config.lb.listen, config.lb.internal_listen, advertise)


def lb_id_of(config: Config, sides: Sides) -> int:
    """``lb.id``, else a number derived from the first internal address (stable across
    restarts, different for LBs on different addresses)."""
    if config.lb.id >= 0:
        return config.lb.id
    first = sides.internal[0]
    return zlib.crc32(f"{first.host}:{first.port}".encode()) & 0xFFFF


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
