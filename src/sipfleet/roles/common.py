"""What every role's ``run`` shares: opening storage, serving until cancelled."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sipfleet.config import Config
from sipfleet.core.authenticate import authority_for
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.storage import Storage, open_storage

log = logging.getLogger(__name__)
YOUNG_GC_INTERVAL_S = 5.0
FULL_GC_INTERVAL_S = 600.0
__all__ = [
    "authority_for",
    "collect_garbage",
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


async def collect_garbage() -> None:
    """Cyclic garbage collection on a timer instead of by allocation counts.

    A proxy keeps every transaction for 32 s (Timers L, M, J over UDP), so the heap holds
    millions of live objects; the automatic collector traverses all of them again and
    again (measured: +80 % CPU per call, and pauses long enough to cost calls). A
    registrar's heap is small, but its full collections still paused it for tens of
    milliseconds, each time holding up every batch of saves in flight (measured: 3,400
    instead of 4,000 REGISTER/s, and failures). A request leaves no cycles (the engine
    cuts the one it makes), so the young generations are swept every few seconds and
    the whole heap only every ten minutes."""
    gc.freeze()  # what start-up loaded stays for good: never traverse it again
    gc.disable()
    last_full = time.monotonic()
    try:
        while True:
            await asyncio.sleep(YOUNG_GC_INTERVAL_S)
            if time.monotonic() - last_full < FULL_GC_INTERVAL_S:
                gc.collect(1)
                continue
            started = time.monotonic()
            found = gc.collect()
            last_full = time.monotonic()
            log.info("full garbage collection: %d unreachable, %.3f s", found, last_full - started)
    finally:
        gc.unfreeze()
        gc.enable()
