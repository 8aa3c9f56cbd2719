"""What the network backends share: a bounded connection pool that reconnects by itself,
the in-flight cap, and one log line per outage and per recovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar

from sipfleet.storage.errors import (
    AlreadyExists,
    InvalidInput,
    StorageError,
    StorageOverloaded,
    StorageUnavailable,
    TooManyContacts,
    TransactionConflict,
)

log = logging.getLogger("sipfleet.storage")

C = TypeVar("C")
T = TypeVar("T")


class _DeadIdleConnection(Exception):
    """A connection from the idle list failed: try once more on a new one."""


# Errors after which the connection is known to be fine (the statement was refused).
REUSABLE_AFTER = (AlreadyExists, InvalidInput, TooManyContacts, TransactionConflict)


class InFlightGate:
    """Counts queries in flight; past ``limit`` a new one is refused at once (shed, 503),
    never queued: an unbounded queue is what made registrars collapse under overload."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def __enter__(self) -> None:
        if self.count >= self.limit:
            raise StorageOverloaded(f"{self.count} queries in flight (database.max_in_flight)")
        self.count += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.count -= 1


class Health:
    """Logs the first failure of an outage and the first success after it, not every query."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: float | None = None
        self.tried_at = 0.0  # the last attempt while down (see may_try)

    def failed(self, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        self.tried_at = now
        if self.down_since is None:
            self.down_since = now
            log.warning("database %s unreachable: %s", self.name, reason)

    def may_try(self, interval: float) -> bool:
        """Up, or down but not tried for ``interval`` seconds (then this is the try): a
        replica that is down costs one attempt per interval, not one per query."""
        if self.down_since is None:
            return True
        now = asyncio.get_running_loop().time()
        if now - self.tried_at < interval:
            return False
        self.tried_at = now
        return True

    def succeeded(self) -> None:
        if self.down_since is not None:
            outage = asyncio.get_running_loop().time() - self.down_since
            self.down_since = None
            log.warning("database %s reachable again after %.1f s", self.name, outage)

    @property
    def up(self) -> bool:
        return self.down_since is None


class Pool(Generic[C]):
    """At most ``size`` connections to one DSN, opened on demand.

    ``classify`` turns a driver exception into a ``StorageError``; a connection whose
    operation ended in ``StorageUnavailable``, a cancellation or an unknown error is closed
    rather than reused, so the next caller reconnects.
    """

    def __init__(
        self,
        name: str,
        size: int,
        connect: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[None]],
        classify: Callable[[BaseException], StorageError],
    ) -> None:
        self.health = Health(name)
        self._connect = connect
        self._close = close
        self._classify = classify
        self._slots = asyncio.Semaphore(size)
        self._idle: list[C] = []

    async def run(self, work: Callable[[C], Awaitable[T]]) -> T:
        """``work(connection)`` on a pooled connection, or a new one.

        A pooled connection may have died while idle (server restarted, idle timeout):
        when one fails with a connection error, the other idle ones are closed too (they
        are as old) and ``work`` runs once more on a new connection. Every operation of the
        storage is safe to repeat (a repeated save meets its own CSeq and changes nothing).
        """
        try:
            return await self._run_once(work, retry_on_dead=True)
        except _DeadIdleConnection:
            await self.close()
            return await self._run_once(work, retry_on_dead=False)

    async def _run_once(self, work: Callable[[C], Awaitable[T]], retry_on_dead: bool) -> T:
        # acquire/release rather than ``async with``: the same, without two coroutines
        # per query (every call of the proxy runs one).
        await self._slots.acquire()
        try:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._open()
            try:
                result = await work(conn)
            except Exception as exc:
                error = await self._failed(conn, exc, reused and retry_on_dead)
                if error is exc:
                    raise
                raise error from exc
            except BaseException:
                await self._discard(conn)  # cancelled mid-query: its state is unknown
                raise
            self._idle.append(conn)
            self.health.succeeded()
            return result
        finally:
            self._slots.release()

    async def _failed(self, conn: C, exc: Exception, retry_on_dead: bool) -> Exception:
        """What a failed operation raises; the connection is kept only when the database
        merely refused the statement."""
        error = exc if isinstance(exc, StorageError) else self._classify(exc)
        if isinstance(error, StorageUnavailable):
            await self._discard(conn)
            if retry_on_dead:
                return _DeadIdleConnection()
            if error is not exc:
                error = self.unavailable(str(error))
        elif isinstance(error, REUSABLE_AFTER):
            self._idle.append(conn)
        else:
            await self._discard(conn)
        return error

    def unavailable(self, reason: str) -> StorageUnavailable:
        """The error callers get (naming the database), logged once per outage."""
        self.health.failed(reason)
        return StorageUnavailable(f"database {self.health.name} unreachable: {reason}")

    async def _open(self) -> C:
        try:
            return await self._connect()
        except Exception as exc:
            raise self.unavailable(str(self._classify(exc))) from exc

    async def _discard(self, conn: C) -> None:
        try:
            await self._close(conn)
        except Exception as exc:  # closing a broken connection may fail as well
            log.debug("closing a broken connection to %s: %s", self.health.name, exc)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await self._close(conn)
            except Exception as exc:
                log.debug("closing a connection to %s: %s", self.health.name, exc)
