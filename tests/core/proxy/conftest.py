"""The routed fake shell's database (``harness.open_database``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipfleet.storage import Storage
from tests.core.proxy.harness import open_database


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await open_database(tmp_path / "proxy.db")
    yield opened
    await opened.close()
