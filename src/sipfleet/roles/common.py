"""What every role's ``run`` shares: opening storage, serving until cancelled, answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sipfleet.config import Config
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.sip.auth import DigestAuthority
from sipfleet.storage import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """A final response to send: status, reason phrase, extra headers."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)


def authority_for(config: Config) -> DigestAuthority:
    """The nonce scheme every authenticating role of the cluster shares."""
    return DigestAuthority(
        config.node.cluster_secret.encode(),
        nonce_lifetime=config.sip.nonce_lifetime_s,
        algorithms=tuple(config.sip.auth_algorithms),
    )


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
