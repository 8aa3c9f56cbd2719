"""The proxies' in-memory copy of the LCR tables (DESIGN §1: small, reloadable caches).

    cache = LcrCache(storage.lcr, reload_interval=5.0)
    await cache.reload()              # the first load, before taking calls
    cache.start()                     # then a timer reloads when the data changed
    table = cache.table               # once per call: the call keeps this table
    trunks = load_gws(table, number, capability, ...)
    await cache.close()

How a change reaches the proxies: every LCR write (``sipfleet gw …``, ``sipfleet lcr …``)
moves ``lcr_version`` on in the same transaction, and ``sipfleet lcr reload`` moves it on
without changing anything. Each proxy's timer reads that one number every
``reload_interval`` seconds and, when it moved, loads the four tables in one snapshot,
builds a new ``LcrTable`` off the event loop and swaps it in with one assignment. No
proxy needs to be reachable from the CLI: a change is live everywhere within one interval
(plus replication lag, when the proxy reads a replica).

``LcrTable`` is immutable, so a call that took the old table keeps routing (and failing
over) with it; the swap drops no call. Rows that fail their checks (possible only when
someone edited the tables by hand) are refused: the old table stays, and the reason is
logged once per version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sipfleet.routing.lcr import LcrError, LcrTable
from sipfleet.storage.errors import StorageError
from sipfleet.storage.interface import LcrStore
from sipfleet.storage.lcr_rows import LcrRows
from sipfleet.storage.model import LcrSnapshot

log = logging.getLogger("sipfleet.lcr")

DEFAULT_RELOAD_INTERVAL = 5.0  # seconds between two looks at lcr_version


class LcrCache:
    """The current ``LcrTable`` and the version of the data it was built from."""

    def __init__(self, store: LcrStore, reload_interval: float = DEFAULT_RELOAD_INTERVAL) -> None:
        if reload_interval <= 0:
            raise ValueError(f"reload_interval: {reload_interval} is not positive")
        self._store = store
        self.reload_interval = reload_interval
        self._table = LcrTable.build(LcrRows())  # no route until the first load
        self._version: int | None = None
        self._rejected: int | None = None  # a version whose rows failed (logged once)
        self._failing = False  # the database could not be read (logged once per outage)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def table(self) -> LcrTable:
        """The table to route a new call with; take it once per call."""
        return self._table

    @property
    def version(self) -> int | None:
        """The ``lcr_version`` of the table in use; None before the first load."""
        return self._version

    async def reload(self, *, force: bool = False) -> bool:
        """Load the tables when their version moved (always with ``force``) and swap the new
        table in; True when it was swapped. Raises ``StorageError`` when the database cannot
        be read (the table in use stays)."""
        async with self._lock:
            if not force and await self._store.version() in (self._version, self._rejected):
                return False
            snapshot = await self._store.load()
            if not force and snapshot.version == self._version:
                return False
            table = await self._build(snapshot)
            if table is None:
                return False
            self._table, self._version, self._rejected = table, snapshot.version, None
            rows = snapshot.rows
            log.info(
                "LCR version %d loaded: %d gateways, %d rules, %d targets",
                snapshot.version,
                len(rows.gateways),
                len(rows.rules),
                len(rows.targets),
            )
            return True

    async def _build(self, snapshot: LcrSnapshot) -> LcrTable | None:
        """The table, built on a worker thread (50,000 rules take about half a second);
        None when the rows fail their checks."""
        origin = f"LCR version {snapshot.version}"
        try:
            return await asyncio.to_thread(LcrTable.build, snapshot.rows, origin)
        except LcrError as exc:
            if self._rejected != snapshot.version:
                log.error(
                    "%s refused, still routing with version %s\n%s", origin, self._version, exc
                )
            self._rejected = snapshot.version
            return None

    def start(self) -> None:
        """Reload now and then every ``reload_interval`` seconds, until ``close``."""
        if self._task is None:
            self._task = asyncio.create_task(self._reload_forever(), name="lcr-reload")

    async def _reload_forever(self) -> None:
        while True:
            try:
                await self.reload()
            except StorageError as exc:
                if not self._failing:
                    log.warning(
                        "LCR reload failed, still routing with version %s: %s", self._version, exc
                    )
                self._failing = True
            else:
                if self._failing:
                    log.warning("LCR reload works again (version %s)", self._version)
                self._failing = False
            await asyncio.sleep(self.reload_interval)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
