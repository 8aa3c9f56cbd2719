"""What the MariaDB and PostgreSQL backends share: pools per DSN, time limits, retries."""

from __future__ import annotations

import asyncio
import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

from sipfleet.storage.batch import SaveOutcome, SaveRequest
from sipfleet.storage.dsn import Dsn, Dsns, Kind
from sipfleet.storage.errors import StorageError, StorageUnavailable, TransactionConflict
from sipfleet.storage.loop import OnItsLoop
from sipfleet.storage.model import AddressOfRecord, BindingUpdate, DatabaseHealth
from sipfleet.storage.pool import Pool
from sipfleet.storage.sql import Row
from sipfleet.storage.statements import Statement, Statements, Step, StepResult
from sipfleet.storage.timing import conflict_met

C = TypeVar("C")
T = TypeVar("T")

CONFLICT_RETRIES = 3  # a deadlock victim is simply run again
CONFLICT_BACKOFF_S = 0.005  # before try n + 1, a random wait of up to n times this
REPLICA_RETRY_S = 1.0  # a replica known to be down is tried again this often

# What a read does when its replica cannot be reached (database.read_fallback).
ReadFallback = Literal["primary", "fail"]


class NetworkExecutor(OnItsLoop, ABC, Generic[C]):
    kind: Kind

    def __init__(
        self,
        dsns: Dsns,
        *,
        pool_size: int = 8,
        query_timeout: float = 5.0,
        connect_timeout: float = 3.0,
        read_fallback: ReadFallback = "primary",
    ) -> None:
        self._dsns = dsns
        self.read_fallback = read_fallback
        self._statements = Statements(self.kind)
        self.query_timeout = query_timeout
        self.connect_timeout = connect_timeout
        self._pools: dict[Dsn, Pool[C]] = {}
        self._write = self._pool_for(dsns.write, pool_size)
        self._reads = [self._pool_for(dsn, pool_size) for dsn in dsns.reads]
        self._next_read = itertools.cycle(range(len(self._reads)))

    @property
    def dsns(self) -> Dsns:
        return self._dsns

    @property
    def statements(self) -> Statements:
        return self._statements

    def _pool_for(self, dsn: Dsn, size: int) -> Pool[C]:
        if dsn not in self._pools:
            self._pools[dsn] = Pool(
                str(dsn), size, lambda: self._connect(dsn), self._close, self._classify
            )
        return self._pools[dsn]

    # What each driver supplies.
    @abstractmethod
    async def _connect(self, dsn: Dsn) -> C: ...
    @abstractmethod
    async def _close(self, conn: C) -> None: ...
    @abstractmethod
    def _classify(self, exc: BaseException) -> StorageError: ...
    @abstractmethod
    async def _fetch(self, conn: C, stmt: Statement, args: Sequence[Any]) -> list[Row]: ...
    @abstractmethod
    async def _execute(self, conn: C, stmt: Statement, args: Sequence[Any]) -> int: ...
    @abstractmethod
    async def _save(
        self,
        conn: C,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome: ...
    @abstractmethod
    async def _save_batch(self, conn: C, requests: Sequence[SaveRequest]) -> list[SaveOutcome]: ...
    @abstractmethod
    async def _transaction(
        self, conn: C, steps: Sequence[Step], snapshot: bool
    ) -> list[StepResult] | None: ...
    @abstractmethod
    async def _ping(self, conn: C) -> None: ...
    @abstractmethod
    async def _replication_lag(self, conn: C) -> float | None:
        """Seconds the server's applied changes trail its primary; None when it is not a
        replica or does not know (replication stopped)."""

    async def fetch(
        self, stmt: Statement, params: Mapping[str, Any], *, replica: bool = False
    ) -> list[Row]:
        args = stmt.args(params)
        if not replica or self._reads[0] is self._write:
            return await self._run(self._write, lambda conn: self._fetch(conn, stmt, args))
        return await self._read(lambda conn: self._fetch(conn, stmt, args))

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        args = stmt.args(params)
        return await self._run(self._write, lambda conn: self._execute(conn, stmt, args))

    async def save(
        self,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome:
        return await self._run(
            self._write, lambda conn: self._save(conn, aor, updates, now, max_contacts)
        )

    async def save_batch(self, requests: Sequence[SaveRequest]) -> list[SaveOutcome]:
        return await self._run(self._write, lambda conn: self._save_batch(conn, requests))

    async def transaction(
        self,
        steps: Sequence[Step],
        *,
        snapshot: bool = False,
        replica: bool = False,
        extra_time: float = 0.0,
    ) -> list[StepResult] | None:
        """See ``Executor.transaction``; ``extra_time`` lengthens the time limit (imports)."""
        if snapshot and replica and self._reads[0] is not self._write:
            return await self._read(lambda conn: self._transaction(conn, steps, True), extra_time)
        return await self._run(
            self._write, lambda conn: self._transaction(conn, steps, snapshot), extra_time
        )

    async def _read(self, work: Callable[[C], Awaitable[T]], extra_time: float = 0.0) -> T:
        """On a replica (round robin, skipping those known to be down); when none answers,
        on the primary, or ``StorageUnavailable`` with ``read_fallback = "fail"``. A replica
        skipped as down is still asked when the primary fails too: it may be back."""
        pool, skipped = self._replica()
        if pool is None:
            failure = StorageUnavailable(f"database {skipped.health.name} unreachable")
        else:
            try:
                return await self._run(pool, work, extra_time)
            except StorageUnavailable as exc:
                failure = exc
        if self.read_fallback == "fail":
            raise failure
        try:
            return await self._run(self._write, work, extra_time)
        except StorageUnavailable:
            if pool is not None:
                raise
        return await self._run(skipped, work, extra_time)

    def _replica(self) -> tuple[Pool[C] | None, Pool[C]]:
        """The replica to ask (None: all known down) and the one whose turn it was."""
        first = next(self._next_read)
        for i in range(len(self._reads)):
            pool = self._reads[(first + i) % len(self._reads)]
            if pool.health.may_try(REPLICA_RETRY_S):
                return pool, self._reads[first]
        return None, self._reads[first]

    async def _run(
        self, pool: Pool[C], work: Callable[[C], Awaitable[T]], extra_time: float = 0.0
    ) -> T:
        """One operation on one connection within the time limit; conflicts are retried."""
        limit = self.query_timeout + extra_time
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                return await _within(limit, pool, work, self._running_loop())
            except TimeoutError:
                reason = f"no answer within {limit:g} s"
                raise pool.unavailable(reason) from None
            except TransactionConflict as exc:
                conflict_met()
                if attempt == CONFLICT_RETRIES:
                    message = f"database {pool.health.name}: {exc} ({attempt} tries)"
                    raise StorageUnavailable(message) from exc
            # The winner may still be committing (on another Galera node its write set is
            # applied here a moment later), and a retry at once often meets it again; a
            # random wait also sets apart the retries of the two sides of one conflict.
            await asyncio.sleep(random.uniform(0, CONFLICT_BACKOFF_S * attempt))
        raise AssertionError("unreachable")

    async def health(self) -> list[DatabaseHealth]:
        """The primary, then each replica: whether it answers within the connect time
        limit and, for a replica, its lag. All asked at once."""
        replicas = [pool for pool in self._reads if pool is not self._write]
        probes = [self._probe(self._write, "primary")]
        probes += [self._probe(pool, "replica") for pool in replicas]
        return list(await asyncio.gather(*probes))

    async def _probe(self, pool: Pool[C], role: Literal["primary", "replica"]) -> DatabaseHealth:
        name = pool.health.name
        try:
            async with asyncio.timeout(self.connect_timeout):
                await pool.run(self._ping)
        except TimeoutError:
            return DatabaseHealth(
                name, role, False, error=f"no answer within {self.connect_timeout:g} s"
            )
        except StorageError as exc:
            return DatabaseHealth(name, role, False, error=str(exc))
        if role == "primary":
            return DatabaseHealth(name, role, True)
        try:
            async with asyncio.timeout(self.connect_timeout):
                lag = await pool.run(self._replication_lag)
        except (TimeoutError, StorageError) as exc:  # e.g. no privilege to read the status
            return DatabaseHealth(name, role, True, error=f"lag unknown: {exc or 'timeout'}")
        return DatabaseHealth(name, role, True, lag_s=lag)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()


class _Deadline:
    """Cancels the task it guards when called (the time limit passed), and says whether
    that cancellation was the only one."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()

    def settle(self) -> bool:
        """After the work: True when this deadline cancelled it and nothing else did
        (then the cancellation is a time-out); withdraws its cancellation either way."""
        if not self.fired:
            return False
        self.fired = False
        return self.task.uncancel() == 0


async def _within(
    limit: float, pool: Pool[C], work: Callable[[C], Awaitable[T]], loop: asyncio.AbstractEventLoop
) -> T:
    """``pool.run(work)`` within ``limit`` seconds, else ``TimeoutError``: what ``asyncio.timeout``
    does, for a third of its cost (measured: 23k instructions per query against 9k, and
    every call of the proxy runs a query). A cancellation from outside stays one.
    ``loop``: the running one (given, so that neither call here asks for it)."""
    task = asyncio.current_task(loop)
    if task is None:
        raise RuntimeError("a storage query needs a task (its time limit cancels it)")
    deadline = _Deadline(task)
    timer = loop.call_later(limit, deadline)
    try:
        return await pool.run(work)
    except asyncio.CancelledError:
        if deadline.settle():
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
        deadline.settle()
