"""database.read_fallback: what a read does while the replica is down, and that the replica
is used again by itself when it returns.

Both backends run a real primary and replica: MariaDB with its binary log and GTID
replication, PostgreSQL a hot standby streaming the primary's WAL (``pg_basebackup -R``
and a replication slot, tests/dbservers.py). Rows reach the replica only by replication.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sipfleet.storage import Aor, BindingUpdate, Dsn, Dsns, Storage, StorageUnavailable
from tests.dbservers import (
    FAST_MARIADB,
    FAST_POSTGRES,
    DbServer,
    PostgresServer,
    start_mariadb_primary,
    start_mariadb_replica,
    start_postgres_primary,
    start_postgres_standby,
    wait_caught_up,
    wait_replicated_postgres,
)
from tests.storage.conftest import OpenStorage, migrate

NOW = int(time.time())
BOB = Aor("bob", "example.com")
CAROL = Aor("carol", "example.com")
CAROL_PHONE = BindingUpdate("sip:carol@192.0.2.2", NOW + 60, "c2", 1)


@dataclass
class Pair:
    primary: DbServer
    replica: DbServer

    def caught_up(self) -> None:
        wait_caught_up(self.primary, self.replica)

    def ensure_running(self) -> None:
        for server in (self.primary, self.replica):
            if not server.running:
                server.start()


def _mariadb_pair() -> Pair:
    primary = start_mariadb_primary(FAST_MARIADB)
    try:
        return Pair(primary, start_mariadb_replica(primary, FAST_MARIADB))
    except BaseException:
        primary.destroy()
        raise


def _postgres_pair() -> Pair:
    primary = start_postgres_primary(FAST_POSTGRES)
    try:
        return Pair(primary, start_postgres_standby(primary, FAST_POSTGRES))
    except BaseException:
        primary.destroy()
        raise


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(_mariadb_pair, id="mariadb", marks=pytest.mark.mysql),
        pytest.param(_postgres_pair, id="postgres", marks=pytest.mark.postgres),
    ],
)
def own_pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    pair: Pair = request.param()
    try:
        yield pair
    finally:
        pair.replica.destroy()
        pair.primary.destroy()


_names = iter(range(1, 1000))


@pytest.fixture
def dsns(own_pair: Pair) -> Iterator[Dsns]:
    """A migrated database on the primary, present on the replica; both servers running."""
    own_pair.ensure_running()
    name = f"fallback_{next(_names)}"
    primary = own_pair.primary.create_database(name)
    migrate(primary)
    own_pair.caught_up()
    replica = own_pair.replica.dsn(name)
    yield Dsns(Dsn.parse(primary), (Dsn.parse(replica),))
    own_pair.ensure_running()


async def register(pair: Pair, dsns: Dsns, opened: OpenStorage, aor: Aor) -> None:
    """One binding of ``aor`` on the primary, on the replica once replicated."""
    update = BindingUpdate(f"sip:{aor.username}@192.0.2.1", NOW + 3600, "c1", 1)
    writer = opened(Dsns(dsns.write, (dsns.write,)))
    await writer.location.save(aor, [update], now=NOW, max_contacts=10)
    pair.caught_up()


async def found(storage: Storage, aor: Aor) -> bool:
    return len(await storage.location.lookup(aor, now=NOW)) == 1


async def eventually_found(storage: Storage, aor: Aor, timeout: float) -> float:
    """Seconds until a lookup of ``aor`` succeeds (failures meanwhile are expected)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if await found(storage, aor):
                return time.monotonic() - started
        except StorageUnavailable:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{aor} not found within {timeout} s")


async def test_reads_fall_back_to_the_primary_and_return_to_the_replica(
    own_pair: Pair, dsns: Dsns, opened: OpenStorage, caplog: pytest.LogCaptureFixture
) -> None:
    await register(own_pair, dsns, opened, BOB)
    storage = opened(dsns, read_fallback="primary", retry_primary_on_miss=False)
    assert await found(storage, BOB)

    own_pair.replica.stop()
    caplog.set_level(logging.WARNING, "sipfleet.storage")
    started = time.monotonic()
    for _ in range(20):
        assert await found(storage, BOB)  # from the primary
    assert time.monotonic() - started < 2.0  # the dead replica is not asked each time
    outage = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1, outage
    assert str(dsns.reads[0]) in outage[0]
    await storage.location.save(  # writes never used the replica
        CAROL, [CAROL_PHONE], now=NOW, max_contacts=5
    )

    own_pair.replica.start()
    own_pair.caught_up()  # CAROL, written meanwhile, too
    own_pair.primary.stop()  # from now on only the replica can answer
    # Reads at the same moment: one tries the replica (still marked down), the others
    # would have skipped it for the primary; the primary is down too, so they ask it anyway.
    results = await asyncio.gather(*(found(storage, BOB) for _ in range(5)))
    assert results == [True] * 5
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_with_fail_a_read_fails_at_once_and_recovers_by_itself(
    own_pair: Pair, dsns: Dsns, opened: OpenStorage
) -> None:
    await register(own_pair, dsns, opened, BOB)
    storage = opened(dsns, read_fallback="fail", retry_primary_on_miss=True)
    assert await found(storage, BOB)

    own_pair.replica.stop()
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(StorageUnavailable, match="unreachable"):
            await storage.location.lookup(BOB, now=NOW)
    assert time.monotonic() - started < 2.0
    with pytest.raises(StorageUnavailable):
        await storage.subscribers.get("bob", "example.com")  # every replica read fails
    await storage.location.save(  # writes go on: they never used the replica
        CAROL, [CAROL_PHONE], now=NOW, max_contacts=5
    )

    own_pair.replica.start()
    took = await eventually_found(storage, BOB, timeout=5.0)
    assert took < 3.0  # tried again every second, used as soon as it answers


async def test_health_reports_the_primary_the_replica_and_its_lag(
    own_pair: Pair, dsns: Dsns, opened: OpenStorage
) -> None:
    """Storage.health(): both answer; the replica says how far behind it is (MariaDB's
    Seconds_Behind_Master; the standby 0 once it has replayed all it received). A stopped
    replica is down with the reason, the primary still up."""
    storage = opened(dsns)
    primary, replica = await storage.health()
    assert (primary.role, primary.up, primary.lag_s, primary.error) == ("primary", True, None, None)
    assert (replica.role, replica.up, replica.error) == ("replica", True, None)
    assert replica.name == str(dsns.reads[0])
    assert "@" in replica.name
    assert replica.lag_s is not None
    assert 0 <= replica.lag_s < 30
    own_pair.replica.stop()
    primary, replica = await storage.health()
    assert primary.up
    assert not replica.up
    assert replica.error


@pytest.mark.postgres
@pytest.mark.parametrize("own_pair", [_postgres_pair], ids=["postgres"], indirect=True)
async def test_a_write_to_the_standby_is_unavailable_not_an_error(
    own_pair: Pair, dsns: Dsns, opened: OpenStorage
) -> None:
    """database.write naming the standby (a mistake, or a primary demoted by a failover)
    is a database that cannot take the write: StorageUnavailable, so the registrar answers
    503 with Retry-After, and the message says why."""
    misconfigured = opened(Dsns(dsns.reads[0], dsns.reads))
    with pytest.raises(StorageUnavailable, match="read-only standby, not the primary"):
        await misconfigured.location.save(CAROL, [CAROL_PHONE], now=NOW, max_contacts=5)
    assert not await found(misconfigured, CAROL)  # reads from it still work


@pytest.mark.postgres
@pytest.mark.parametrize("own_pair", [_postgres_pair], ids=["postgres"], indirect=True)
async def test_a_standby_that_has_not_replayed_reports_its_lag(
    own_pair: Pair, dsns: Dsns, opened: OpenStorage
) -> None:
    """Replay paused on the standby, WAL received but not applied: the lag is the age of
    the last transaction it replayed; 0 again once it has caught up; unknown (None) while
    it has no primary to stream from."""
    primary, standby = own_pair.primary, own_pair.replica
    assert isinstance(primary, PostgresServer)
    assert isinstance(standby, PostgresServer)
    await register(own_pair, dsns, opened, BOB)
    replayed_at = time.monotonic()  # BOB's commit, now replayed, was before this
    storage = opened(dsns, retry_primary_on_miss=False)
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        await opened(Dsns(dsns.write, (dsns.write,))).location.save(
            CAROL, [CAROL_PHONE], now=NOW, max_contacts=5
        )
        wait_replicated_postgres(primary, standby, until="receive")
        at_least = time.monotonic() - replayed_at
        _, behind = await storage.health()
        assert behind.up
        assert behind.lag_s is not None
        assert behind.lag_s >= at_least > 0
        assert not await found(storage, CAROL)  # the replica's reads: not applied yet
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")
    own_pair.caught_up()
    _, current = await storage.health()
    assert current.lag_s == 0
    assert await found(storage, CAROL)

    primary.stop()  # its WAL sender ends the stream: the standby's receiver exits
    deadline = time.monotonic() + 10
    while standby.sql("SELECT count(*) FROM pg_stat_wal_receiver").strip() != "0":
        assert time.monotonic() < deadline, "the standby still streams from a stopped primary"
        time.sleep(0.05)
    _, cut_off = await storage.health()
    assert (cut_off.up, cut_off.lag_s) == (True, None)  # unknown, not 0


@pytest.mark.postgres
@pytest.mark.parametrize("own_pair", [_postgres_pair], ids=["postgres"], indirect=True)
async def test_a_standby_that_turns_clients_away_is_down_not_an_error(
    own_pair: Pair, dsns: Dsns, opened: OpenStorage
) -> None:
    """A standby that runs but lets no client in ("the database system is not accepting
    connections": still starting up, or hot_standby off, as here, where it lasts) is a
    replica that is down: reads fall back or fail by read_fallback, health says why."""
    standby = own_pair.replica
    assert isinstance(standby, PostgresServer)
    writer = opened(Dsns(dsns.write, (dsns.write,)))
    await writer.location.save(BOB, [CAROL_PHONE], now=NOW, max_contacts=5)
    settings = dict(standby.options)
    standby.stop()
    standby.options["hot_standby"] = "off"
    try:
        standby.start(ready=False)
        fallback = opened(dsns, read_fallback="primary", retry_primary_on_miss=False)
        assert await found(fallback, BOB)  # from the primary
        strict = opened(dsns, read_fallback="fail")
        with pytest.raises(StorageUnavailable, match="not accepting connections"):
            await strict.location.lookup(BOB, now=NOW)
        _, replica = await fallback.health()
        assert not replica.up
        assert replica.error is not None
        assert "not accepting connections" in replica.error
    finally:
        standby.stop()
        standby.options = settings
        standby.start()
