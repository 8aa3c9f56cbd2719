"""What every role's ``run`` shares: opening storage, serving until cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sipfleet.config import Config
from sipfleet.core.authenticate import authority_for
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.storage import Storage, open_storage

log = logging.getLogger(__name__)
__all__ = ["authority_for", "serve_until_cancelled", "storage_for"]


@asynccontextmanager
async def storage_for(config: Config) -> AsyncIterator[Storage]:
    """The node's storage, checked to be at the current schema revision."""
    storage = open_storage(config)
    try:
        await storage.check_schema()
        yield storage
    finally:
        await storage.close()


async def serve_until_cancelled(
    endpoint: SipEndpoint, ready: Callable[[], None] | None = None
) -> None:
    async with endpoint:
        if ready is not None:
            ready()
        await asyncio.Event().wait()  # until the task is cancelled
