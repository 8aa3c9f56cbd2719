"""Fixtures any test may use. Database servers are started once per session, on demand."""

from __future__ import annotations

import atexit
import itertools
from collections.abc import Iterator

import pytest

from tests.dbservers import FAST_MARIADB, FAST_POSTGRES, DbServer, start_mariadb, start_postgres

_names = itertools.count(1)


def new_database(server: DbServer, prefix: str = "t") -> str:
    """A new, empty database on ``server``; returns its DSN."""
    return server.create_database(f"{prefix}_{next(_names)}")


def _serve(server: DbServer) -> Iterator[DbServer]:
    atexit.register(server.destroy)  # also when the session dies before teardown
    try:
        yield server
    finally:
        server.destroy()
        atexit.unregister(server.destroy)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[DbServer]:
    """A private mariadbd (root, no password) on a free port of 127.0.0.1."""
    yield from _serve(start_mariadb(FAST_MARIADB))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[DbServer]:
    """A private PostgreSQL (user postgres, trust) on a free port of 127.0.0.1."""
    yield from _serve(start_postgres(FAST_POSTGRES))
