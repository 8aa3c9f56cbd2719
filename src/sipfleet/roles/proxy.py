"""The proxy role: the stateful proxy engine on ``[proxy] listen``, the operator's routing
policy, the location table read from the read DSN."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Sequence

from sipfleet.config import Config
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.overload import no_backlog, receive_backlog
from sipfleet.core.proxy.engine import ProxyEngine, settings_from_config
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.plans import Planner
from sipfleet.core.proxy.privacy_hooks import PrivacyHooks
from sipfleet.core.proxy.services import ProxyServices
from sipfleet.roles.common import (
    authority_for,
    collect_garbage,
    serve_until_cancelled,
    storage_for,
)
from sipfleet.routing.api import OffNetRouter, load_policy
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.storage import Storage
from sipfleet.storage.errors import StorageError
from sipfleet.transport.base import TransportLimits
from sipfleet.transport.sockets import bind_all

log = logging.getLogger(__name__)
GIL_SWITCH_INTERVAL_S = 0.0005


def build_engine(
    config: Config,
    storage: Storage,
    endpoint: SipEndpoint,
    *,
    off_net: OffNetRouter | None = None,
    sockets: Sequence[socket.socket] = (),
    hooks: MessageHooks = NO_HOOKS,
) -> ProxyEngine:
    """The engine for ``config``; it hears of ``endpoint``'s late send failures, but is
    not yet its handler. ``sockets``: the endpoint's bound sockets, watched for overload."""
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
    udp = [sock for sock in sockets if sock.type == socket.SOCK_DGRAM]
    backlog = receive_backlog(udp) if udp else no_backlog
    engine = ProxyEngine(
        endpoint,
        policy,
        planner,
        services,
        settings,
        hooks=hooks,
        backlog=backlog,
        dialog_tokens=DialogTokens(config.node.cluster_secret.encode()),
    )
    endpoint.on_send_error = engine.destination_failed
    return engine


async def follow_proxy_pool(storage: Storage, engine: ProxyEngine, interval: float) -> None:
    """Keep the engine's idea of its siblings in step with the LB's proxy pool, so any
    proxy continues a dialog another one Record-Routed (that one may be gone)."""
    known: list[str] | None = None
    while True:
        try:
            uris = sorted(t.uri for t in await storage.lb_targets.list_all("proxy"))
        except StorageError as exc:
            log.debug("proxy pool not read: %s", exc)
        else:
            if uris != known:
                engine.adopt_siblings(uris)
                known = uris
        await asyncio.sleep(interval)


async def run(config: Config, *, ready: Callable[[], None] | None = None) -> None:
    """Serve as the proxy until cancelled; ``ready()`` once listening."""
    # The SQLite backend runs queries on a thread. With the default 5 ms GIL switch
    # interval a busy event loop lets that thread in only every 5 ms, and lookups
    # pile up to the in-flight cap (seen at 1,000 calls/s); 0.5 ms keeps them flowing.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    async with storage_for(config) as storage:
        limits = TransportLimits.from_config(config.sip)
        sockets = bind_all(config.proxy.listen, buffer_size=limits.socket_buffer)
        endpoint = SipEndpoint(config.proxy.listen, limits=limits, sockets=sockets)
        lcr = LcrRouter.from_config(config, storage.lcr)
        # caller privacy (DESIGN §4); LCR gateways flagged trusted see the caller
        hooks = PrivacyHooks.from_config(config, lambda: lcr.cache.table.rows.gateways)
        engine = build_engine(config, storage, endpoint, sockets=sockets, off_net=lcr, hooks=hooks)
        await lcr.start(engine.prober)  # the LCR tables loaded before the first call
        endpoint.handler = engine
        collector = asyncio.create_task(collect_garbage())
        siblings = asyncio.create_task(
            follow_proxy_pool(storage, engine, config.proxy.pool_reload_s)
        )
        try:
            await serve_until_cancelled(endpoint, ready)
        finally:
            collector.cancel()
            siblings.cancel()
            await lcr.close()
            await engine.close()
