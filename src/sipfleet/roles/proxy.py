"""The proxy role: the stateful proxy engine on ``[proxy] listen``, the operator's routing
policy, the location table read from the read DSN."""

from __future__ import annotations

from collections.abc import Callable

from sipfleet.config import Config
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.engine import EngineSettings, ProxyEngine
from sipfleet.core.proxy.plans import Planner
from sipfleet.core.proxy.services import ProxyServices
from sipfleet.roles.common import authority_for, serve_until_cancelled, storage_for
from sipfleet.routing.api import OffNetRouter, load_policy
from sipfleet.storage import Storage
from sipfleet.transport.base import TransportLimits


def build_engine(
    config: Config,
    storage: Storage,
    endpoint: SipEndpoint,
    *,
    off_net: OffNetRouter | None = None,
) -> ProxyEngine:
    """The engine for ``config``, not yet attached to ``endpoint``'s handler."""
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
    return ProxyEngine(endpoint, policy, planner, services, EngineSettings.from_config(config))


async def run(config: Config, *, ready: Callable[[], None] | None = None) -> None:
    """Serve as the proxy until cancelled; ``ready()`` once listening."""
    async with storage_for(config) as storage:
        endpoint = SipEndpoint(config.proxy.listen, limits=TransportLimits.from_config(config.sip))
        engine = build_engine(config, storage, endpoint)
        endpoint.handler = engine
        try:
            await serve_until_cancelled(endpoint, ready)
        finally:
            await engine.close()
