"""The registrar role: REGISTER in, bindings written to SQL, expired ones purged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sipfleet.config import Config
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.registrar import Registrar
from sipfleet.roles.common import serve_until_cancelled, storage_for
from sipfleet.storage.expiry import purge_expired_forever


async def run(config: Config, *, ready: Callable[[], None] | None = None) -> None:
    """Serve REGISTER on config.registrar.listen until cancelled."""
    async with storage_for(config) as storage:
        endpoint = SipEndpoint(config.registrar.listen)
        endpoint.handler = Registrar(config, storage, endpoint)
        purge = asyncio.create_task(
            purge_expired_forever(storage.location, config.registrar.purge_interval_s)
        )
        try:
            await serve_until_cancelled(endpoint, ready)
        finally:
            purge.cancel()
