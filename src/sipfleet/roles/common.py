"""What every role's ``run`` shares: opening storage, serving until cancelled."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sipfleet.config import Config
from sipfleet.core.authenticate import authority_for
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.mgmt.server import Listener, ManagementServer
from sipfleet.mgmt.view import RoleView
from sipfleet.roles.collector import collect_garbage
from sipfleet.storage import Storage, open_storage

log = logging.getLogger(__name__)
__all__ = [
    "authority_for",
    "collect_garbage",
    "listening",
    "management",
    "only_worker_zero",
    "ready_after",
    "serve_until_cancelled",
    "storage_for",
]


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


def ready_after(workers: int, ready: Callable[[], None] | None) -> Callable[[], None]:
    """Each worker writes one byte when it listens; a thread of the supervisor calls
    ``ready`` after the first ``workers`` bytes (a restarted worker writes again)."""
    read_end, write_end = os.pipe()

    def wait() -> None:
        seen = 0
        while seen < workers:
            chunk = os.read(read_end, workers - seen)
            if not chunk:
                return
            seen += len(chunk)
        if ready is not None:
            ready()

    def one_more() -> None:
        os.write(write_end, b"r")

    threading.Thread(target=wait, name="workers-ready", daemon=True).start()
    return one_more


@asynccontextmanager
async def management(view: RoleView, listener: Listener | None) -> AsyncIterator[RoleView]:
    """The management API of ``view`` on ``listener`` while inside (nothing without one)."""
    if listener is None:
        yield view
        return
    async with ManagementServer(view, listener):
        yield view


def listening(view: RoleView, ready: Callable[[], None] | None) -> Callable[[], None]:
    """``ready``, after marking the role listening for its API's ``/ready``."""

    def now_listening() -> None:
        view.listening = True
        if ready is not None:
            ready()

    return now_listening


def only_worker_zero(listener: Listener | None, index: int) -> Listener | None:
    """The API is served by worker 0; the other workers close their copy of its socket
    (the supervisor keeps its own, so a restarted worker 0 serves on it again)."""
    if listener is not None and index != 0:
        listener.close()
        return None
    return listener
