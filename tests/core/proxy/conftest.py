"""The routed fake shell's database (``harness.open_database``): made and migrated once
per session, copied for each test (migrating takes longer than a test on the core)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from sipfleet.storage import Storage, open_storage
from tests.core.proxy.harness import open_database


@pytest.fixture(scope="session")
def template_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("proxy-db") / "template.db"

    async def make() -> None:
        storage = await open_database(path)
        await storage.close()

    asyncio.run(make())
    return path


@pytest.fixture
async def storage(tmp_path: Path, template_database: Path) -> AsyncIterator[Storage]:
    path = tmp_path / "proxy.db"
    with (
        closing(sqlite3.connect(template_database)) as source,
        closing(sqlite3.connect(path)) as copy,
    ):
        source.backup(copy)  # the WAL's content too
    opened = open_storage(f"sqlite:///{path}")
    yield opened
    await opened.close()
