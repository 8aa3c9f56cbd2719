"""Faults: the database goes away, hangs or crashes mid-write. Each network backend gets a
server of its own here, since these tests stop it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator

import pytest

from sipfleet.storage import Aor, BindingUpdate, Dsn, Dsns, StorageUnavailable
from sipfleet.storage.sql import SqlStorage
from sipfleet.storage.sqlite import SqliteExecutor
from tests.conftest import new_database
from tests.dbservers import DbServer, start_mariadb, start_postgres
from tests.storage.conftest import Databases, OpenStorage, migrate

NOW = 1_700_000_000
ALICE = Aor("alice", "example.com")


def registration(i: int) -> list[BindingUpdate]:
    return [BindingUpdate(f"sip:u{i}@10.0.0.{n}", NOW + 600, f"c{i}", 1) for n in range(3)]


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(start_mariadb, id="mariadb", marks=pytest.mark.mysql),
        pytest.param(start_postgres, id="postgres", marks=pytest.mark.postgres),
    ],
)
def own_server(request: pytest.FixtureRequest) -> Iterator[DbServer]:
    server: DbServer = request.param()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def server(own_server: DbServer) -> Iterator[DbServer]:
    if not own_server.running:
        own_server.start()
    yield own_server
    if not own_server.running:
        own_server.start()


def migrated_database(server: DbServer) -> str:
    dsn = new_database(server, "fault")
    migrate(dsn)
    return dsn


async def test_unreachable_then_recovers(
    server: DbServer, opened: OpenStorage, caplog: pytest.LogCaptureFixture
) -> None:
    storage = opened(migrated_database(server), query_timeout=5.0)
    await storage.location.save(ALICE, registration(1), now=NOW, max_contacts=10)
    server.stop()
    caplog.set_level(logging.WARNING, "sipfleet.storage")
    for _ in range(3):
        with pytest.raises(StorageUnavailable):
            await storage.location.lookup(ALICE, now=NOW)
    with pytest.raises(StorageUnavailable):
        await storage.location.save(ALICE, registration(2), now=NOW, max_contacts=10)
    outage = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1, outage  # one line per outage, not one per query
    assert str(storage.dsns.write) in outage[0]

    server.start()
    assert len(await storage.location.lookup(ALICE, now=NOW)) == 3  # reconnected by itself
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_restart_between_queries_goes_unnoticed(
    server: DbServer, opened: OpenStorage
) -> None:
    """Pooled connections die with the server; the next query reconnects by itself."""
    storage = opened(migrated_database(server), pool_size=4)
    await asyncio.gather(*(storage.location.lookup(ALICE, now=NOW) for _ in range(4)))
    server.stop()
    server.start()
    await storage.location.save(ALICE, registration(1), now=NOW, max_contacts=10)
    assert len(await storage.location.lookup(ALICE, now=NOW)) == 3


async def test_crash_mid_burst_leaves_no_half_written_binding(
    server: DbServer, opened: OpenStorage
) -> None:
    """Every REGISTER writes three contacts of a new AOR: after a crash, 0 or 3 remain.

    The crash waits for the first writes to be acknowledged rather than for a fixed time:
    on a busy machine opening the pool's connections can take longer than any such time,
    and a crash before the first commit leaves nothing to check."""
    storage = opened(migrated_database(server), query_timeout=5.0)
    total, workers, before_crash = 5000, 16, 100
    acknowledged: set[int] = set()
    writing = asyncio.Event()

    async def worker(first: int) -> None:
        for i in range(first, total, workers):
            try:
                await storage.location.save(
                    Aor(f"u{i}", "x"), registration(i), now=NOW, max_contacts=10
                )
            except StorageUnavailable:
                return
            acknowledged.add(i)
            if len(acknowledged) >= before_crash:
                writing.set()

    burst = asyncio.gather(*(worker(w) for w in range(workers)))
    await asyncio.wait_for(writing.wait(), timeout=30.0)
    server.crash()
    await burst
    assert before_crash <= len(acknowledged) < total, "the crash must fall inside the burst"
    server.start()
    per_aor: dict[str, int] = {}
    for binding in await storage.location.all_bindings(now=NOW):
        per_aor[binding.username] = per_aor.get(binding.username, 0) + 1
    assert set(per_aor.values()) == {3}
    assert acknowledged <= {int(username[1:]) for username in per_aor}, (
        "an acknowledged write was lost"
    )


async def hang(process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP ``process`` and return once all its threads have stopped.

    kill() only starts a group stop: the thread that takes the signal then stops the other
    threads, and until it has run (later on a busy machine) a thread of the server may
    still read and answer a query. The parent is told when the stop is complete
    (waitpid with WUNTRACED); a query sent before that may get its answer."""
    os.kill(process.pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while True:
        pid, status = os.waitpid(process.pid, os.WUNTRACED | os.WNOHANG)
        if pid:
            assert os.WIFSTOPPED(status), f"the server exited instead (status {status})"
            return
        assert loop.time() < deadline, "the server did not stop within 10 s"
        await asyncio.sleep(0.005)


@pytest.mark.mysql
async def test_hung_server_times_out_and_recovers(opened: OpenStorage) -> None:
    server = start_mariadb()
    try:
        storage = opened(migrated_database(server), query_timeout=0.5)
        assert await storage.location.lookup(ALICE, now=NOW) == []
        assert server.process is not None
        await hang(server.process)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(StorageUnavailable, match=r"no answer within 0\.5 s"):
                await storage.location.lookup(ALICE, now=NOW)
            assert asyncio.get_running_loop().time() - started < 2.0
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await storage.location.save(ALICE, registration(1), now=NOW, max_contacts=10)
        assert len(await storage.location.lookup(ALICE, now=NOW)) == 3
    finally:
        server.destroy()


async def test_sqlite_locked_file_is_unavailable_until_released(tmp_path: object) -> None:
    databases = Databases("sqlite", None, tmp_path)  # type: ignore[arg-type]
    dsn = Dsn.parse(databases.migrated())
    assert dsn.path is not None
    storage = SqlStorage(SqliteExecutor(Dsns(dsn, (dsn,)), busy_timeout_ms=100))
    other = sqlite3.connect(dsn.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageUnavailable, match="locked"):
            await storage.location.save(ALICE, registration(1), now=NOW, max_contacts=10)
        other.execute("ROLLBACK")
        await storage.location.save(ALICE, registration(1), now=NOW, max_contacts=10)
        assert len(await storage.location.lookup(ALICE, now=NOW)) == 3
    finally:
        other.close()
        await storage.close()
