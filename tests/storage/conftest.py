"""The contract suite's fixtures: the same tests run against SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sipfleet.storage import Dsn, Dsns, Storage, open_storage
from sipfleet.storage.migrate import upgrade
from sipfleet.storage.schema import TABLES
from tests.conftest import new_database
from tests.dbservers import DbServer

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("mysql", id="mariadb", marks=pytest.mark.mysql),
    pytest.param("postgresql", id="postgres", marks=pytest.mark.postgres),
]
SERVER_FIXTURE = {"mysql": "mariadb_server", "postgresql": "postgres_server"}


def migrate(dsn: str) -> None:
    """Run the migrations to the head; callable from sync code inside a running loop too."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, upgrade(Dsn.parse(dsn))).result()


class Databases:
    """Hands out migrated databases of one backend: fresh ones, or the shared one emptied."""

    def __init__(self, kind: str, server: DbServer | None, workdir: Path) -> None:
        self.kind = kind
        self.server = server
        self.workdir = workdir
        self._count = 0
        self._template: Path | None = None
        self._shared: str | None = None

    def empty(self) -> str:
        """A new database with no tables at all."""
        self._count += 1
        if self.server is None:
            return f"sqlite://{self.workdir / f'db{self._count}.db'}"
        return new_database(self.server, "sf")

    def migrated(self) -> str:
        """A new migrated database (SQLite: a copy of a migrated template file)."""
        if self.server is not None:
            dsn = self.empty()
            migrate(dsn)
            return dsn
        if self._template is None:
            self._template = self.workdir / "template.db"
            migrate(f"sqlite://{self._template}")
        self._count += 1
        copy = self.workdir / f"db{self._count}.db"
        shutil.copy(self._template, copy)
        return f"sqlite://{copy}"

    def clean(self) -> str:
        """The shared migrated database of the session, with every table emptied."""
        if self.server is None:
            return self.migrated()
        if self._shared is None:
            self._shared = self.migrated()
        database = self._shared.rsplit("/", 1)[1]
        names = [table.name for table in reversed(TABLES)]
        if self.kind == "postgresql":
            self.server.sql(f"TRUNCATE {', '.join(names)} RESTART IDENTITY", database)
        else:
            self.server.sql("; ".join(f"DELETE FROM {name}" for name in names), database)
        return self._shared


@pytest.fixture(scope="session", params=BACKENDS)
def databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Databases:
    kind: str = request.param
    server = request.getfixturevalue(SERVER_FIXTURE[kind]) if kind in SERVER_FIXTURE else None
    return Databases(kind, server, tmp_path_factory.mktemp(f"db-{kind}"))


OpenStorage = Callable[..., Storage]


@pytest.fixture
async def opened() -> AsyncIterator[OpenStorage]:
    """``opened(dsns, **options)``: a storage closed at the end of the test."""
    storages: list[Storage] = []

    def open_one(source: Dsns | str, **options: object) -> Storage:
        storage = open_storage(source, **options)  # type: ignore[arg-type]
        storages.append(storage)
        return storage

    yield open_one
    for storage in storages:
        await storage.close()


@pytest.fixture
async def storage(databases: Databases, opened: OpenStorage) -> Storage:
    """A storage on an empty, migrated database of the backend under test."""
    return opened(databases.clean())
