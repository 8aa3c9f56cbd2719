"""The purge timer removes expired rows and survives a database outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sipfleet.storage import Aor, BindingUpdate, Storage
from sipfleet.storage.expiry import purge_expired_forever
from tests.storage.conftest import Databases, OpenStorage, migrate


async def rows_left(storage: Storage) -> int:
    """Every row, expired or not (all_bindings filters on 'now', so look from the past)."""
    return len(await storage.location.all_bindings(now=0))


async def test_timer_purges_and_keeps_running(databases: Databases, opened: OpenStorage) -> None:
    storage = opened(databases.clean())
    now = int(time.time())
    aor = Aor("alice", "example.com")
    updates = [
        BindingUpdate("sip:a@old", now - 1, "c", 1),
        BindingUpdate("sip:a@new", now + 600, "c", 1),
    ]
    await storage.location.save(aor, updates, now=now - 10, max_contacts=10)
    assert await rows_left(storage) == 2

    timer = asyncio.create_task(purge_expired_forever(storage.location, interval_s=0.05))
    try:
        deadline = time.monotonic() + 5
        while await rows_left(storage) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [b.contact for b in await storage.location.all_bindings(now=0)] == ["sip:a@new"]
        assert not timer.done()
    finally:
        timer.cancel()


async def test_timer_survives_an_unreachable_database(
    tmp_path: Path, opened: OpenStorage, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = f"sqlite://{tmp_path / 'later.db'}"
    storage = opened(dsn)  # the file does not exist yet: every purge fails
    timer = asyncio.create_task(purge_expired_forever(storage.location, interval_s=0.02))
    try:
        deadline = time.monotonic() + 5
        while "purging expired bindings failed" not in caplog.text:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        migrate(dsn)
        now = int(time.time())
        await storage.location.save(
            Aor("a", "b"), [BindingUpdate("sip:x", now - 1, "c", 1)], now=now - 5, max_contacts=1
        )
        while await rows_left(storage):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert not timer.done()
    finally:
        timer.cancel()
