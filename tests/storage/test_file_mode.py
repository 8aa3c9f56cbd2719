"""The embedded database holds every HA1: its file is 0600 from its creation, an upgrade
takes group and other access away from an older one, and a role refuses to start on a
file anyone on the host may read."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.storage import Dsn, open_storage
from sipfleet.storage.errors import StorageError
from sipfleet.storage.migrate import upgrade


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual umask (0644 files): what a plain sqlite3.connect would create."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_a_new_database_file_is_the_owners_alone(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "data" / "sipfleet.db"
    await upgrade(Dsn.parse(f"sqlite:///{path}"))
    assert mode_of(path) == 0o600
    wal = path.with_name("sipfleet.db-wal")
    if wal.exists():  # SQLite gives its WAL the database file's mode
        assert mode_of(wal) & 0o077 == 0


async def test_an_upgrade_tightens_an_older_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sipfleet.db"
    await upgrade(Dsn.parse(f"sqlite:///{path}"))
    path.chmod(0o644)  # as sessions before this one created it
    with caplog.at_level(logging.WARNING):
        await upgrade(Dsn.parse(f"sqlite:///{path}"))
    assert mode_of(path) == 0o600
    assert "was mode 0644, now 0600" in caplog.text


async def test_a_role_refuses_a_file_anyone_can_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sipfleet.db"
    await upgrade(Dsn.parse(f"sqlite:///{path}"))
    path.chmod(0o644)
    storage = open_storage(f"sqlite:///{path}")
    try:
        with pytest.raises(StorageError, match=r"mode 0644: anyone on this host can read"):
            await storage.check_schema()
        path.chmod(0o640)  # the group only: allowed, with a warning
        with caplog.at_level(logging.WARNING):
            await storage.check_schema()
        assert "its group can read password hashes" in caplog.text
        path.chmod(0o600)
        await storage.check_schema()
    finally:
        await storage.close()
