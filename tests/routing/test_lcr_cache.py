"""The proxies' LCR cache over a real (SQLite) database: reload on version change only,
atomic swap, refused data keeps the old table, the timer picks changes up."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipfleet.routing.lcr import PHONE, LcrTable, load_gws
from sipfleet.routing.lcr_cache import LcrCache
from sipfleet.routing.lcr_file import load_lcr_file
from sipfleet.storage import Dsn, LcrSnapshot, Storage, StorageUnavailable, open_storage
from sipfleet.storage.lcr_rows import LcrRows
from sipfleet.storage.migrate import upgrade

EXAMPLE = Path(__file__).parents[2] / "examples" / "lcr-capabilities.toml"


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    url = f"sqlite://{tmp_path / 'lcr.db'}"
    await upgrade(Dsn.parse(url))
    opened = open_storage(url)
    yield opened
    await opened.close()


def first_uris(table: LcrTable, number: str = "4312345") -> list[str]:
    return [str(trunk.uri) for trunk in load_gws(table, number, PHONE)]


def sql(storage: Storage, statement: str) -> None:
    """Edit the tables behind the store's back, as an operator with a SQL shell might."""
    path = storage.dsns.write.path
    assert path is not None
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(statement)


async def test_reloads_only_when_the_version_moved(storage: Storage) -> None:
    cache = LcrCache(storage.lcr)
    assert (cache.version, first_uris(cache.table)) == (None, [])
    await storage.lcr.replace_all(load_lcr_file(EXAMPLE).rows)

    assert await cache.reload()
    assert cache.version == 1
    table = cache.table
    assert first_uris(table)[0] == "sip:014312345@sipgw6"
    assert not await cache.reload()  # nothing changed: same table object
    assert cache.table is table

    version = await storage.lcr.bump_version()  # `sipfleet lcr reload`
    assert await cache.reload()
    assert (cache.version, cache.table is table) == (version, False)
    assert await cache.reload(force=True)


async def test_a_call_in_progress_keeps_its_table(storage: Storage) -> None:
    await storage.lcr.replace_all(load_lcr_file(EXAMPLE).rows)
    cache = LcrCache(storage.lcr)
    await cache.reload()
    in_progress = cache.table
    before = first_uris(in_progress)

    await storage.lcr.set_gateway_enabled("sipgw6", False)
    assert await cache.reload()
    assert first_uris(cache.table)[0] != "sip:014312345@sipgw6"
    assert len(first_uris(cache.table)) == 5
    # The table the call took is unchanged: it still fails over the old way.
    assert first_uris(in_progress)[0] == before[0] == "sip:014312345@sipgw6"
    assert len(first_uris(in_progress)) == 6


async def test_refused_data_keeps_the_old_table(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    await storage.lcr.replace_all(load_lcr_file(EXAMPLE).rows)
    cache = LcrCache(storage.lcr)
    await cache.reload()
    table = cache.table
    # By hand: sipgw2 loses fax, which a rule target still asks of it.
    sql(
        storage,
        "DELETE FROM lcr_gw_cap WHERE gw = 'sipgw2' AND capability = 2;"
        "UPDATE lcr_version SET version = version + 1;",
    )
    with caplog.at_level(logging.ERROR, "sipfleet.lcr"):
        assert not await cache.reload()
        assert not await cache.reload()  # the same bad version: not loaded, not logged again
    assert (cache.table, cache.version) == (table, 1)
    [record] = caplog.records
    assert "LCR version 2 refused, still routing with version 1" in record.getMessage()
    assert 'target gw "sipgw2": cap: bits 2 are not carried' in record.getMessage()

    # Fixed through the store: the next reload takes it.
    await storage.lcr.replace_all(load_lcr_file(EXAMPLE).rows)
    assert await cache.reload()
    assert cache.version == 3


class FlakyStore:
    """The real store, but unreachable while ``down`` is set."""

    def __init__(self, storage: Storage) -> None:
        self.lcr = storage.lcr
        self.down = False

    async def version(self, *, replica: bool = True) -> int:
        if self.down:
            raise StorageUnavailable("database sqlite:///x unreachable: test")
        return await self.lcr.version(replica=replica)

    async def load(self, *, replica: bool = True) -> LcrSnapshot:
        return await self.lcr.load(replica=replica)


async def test_the_timer_picks_changes_up_and_survives_outages(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(storage)
    cache = LcrCache(store, reload_interval=0.02)  # type: ignore[arg-type]
    cache.start()
    try:
        await storage.lcr.replace_all(load_lcr_file(EXAMPLE).rows)
        await wait_for_version(cache, 1)
        store.down = True
        with caplog.at_level(logging.WARNING, "sipfleet.lcr"):
            await asyncio.sleep(0.1)  # several failed rounds
            store.down = False
            await storage.lcr.replace_all(LcrRows())
            await wait_for_version(cache, 2)
        messages = [record.getMessage() for record in caplog.records]
        assert messages[0].startswith("LCR reload failed, still routing with version 1")
        assert messages[1].startswith("LCR reload works again")
        assert len(messages) == 2  # one line per outage, not one per round
        assert first_uris(cache.table) == []
    finally:
        await cache.close()


async def wait_for_version(cache: LcrCache, version: int) -> None:
    for _ in range(200):
        if cache.version == version:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"cache still at version {cache.version}, not {version}")


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="reload_interval: 0 is not positive"):
        LcrCache(None, 0)  # type: ignore[arg-type]
