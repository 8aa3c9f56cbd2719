"""How long each kind of storage operation takes and how often the database fails it.

A kind is an operation of the storage interface (``location.save``, ``subscriber.get``,
...): a name written in the code, never SQL text. An operation is timed as its caller
waits for it, queueing in a batch included (a REGISTER's save waits for its batch's
round trip). Only the database's failures count as errors (unreachable, too slow,
overloaded, a conflict that would not settle); a refusal of the caller's input
(``InvalidInput``, ``AlreadyExists``, ``TooManyContacts``) is an answer, not an error.

One table per process (``STATEMENTS``): a process opens one storage, and the metrics of
a process are what its workers publish (sipfleet.mgmt.metrics).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from sipfleet.stats import DATABASE_BUCKETS, HistogramTable
from sipfleet.storage.errors import (
    StorageError,
    StorageOverloaded,
    StorageUnavailable,
    TransactionConflict,
)

P = ParamSpec("P")
T = TypeVar("T")


class StatementStats:
    def __init__(self) -> None:
        self.latency = HistogramTable(DATABASE_BUCKETS)
        self.errors: dict[tuple[str, str], int] = {}  # (kind, error) -> count

    def failed(self, kind: str, error: str) -> None:
        key = (kind, error)
        self.errors[key] = self.errors.get(key, 0) + 1


STATEMENTS = StatementStats()
# The operation being timed, for what the backends count below it (a batch of saves runs
# in a task started from a save, so it is counted as ``location.save``).
_KIND: ContextVar[str] = ContextVar("storage_operation", default="other")


def conflict_met() -> None:
    """The database rolled the current operation back in a conflict (a deadlock, a lock
    wait timeout, Galera's certification): counted as error ``conflict`` whether the
    backend's retry then settles it or not."""
    STATEMENTS.failed(_KIND.get(), "conflict")


def error_name(exc: StorageError) -> str | None:
    """The error label of a database failure; None for a refusal of the input."""
    if isinstance(exc, StorageOverloaded):
        return "overloaded"
    if isinstance(exc, StorageUnavailable):
        return "unavailable"
    if isinstance(exc, TransactionConflict):
        return "conflict"
    return None


def timed(
    kind: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Time the decorated storage operation as ``kind`` in ``STATEMENTS``."""

    def decorate(operation: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(operation)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            current = _KIND.set(kind)
            try:
                return await operation(*args, **kwargs)
            except StorageError as exc:
                error = error_name(exc)
                if error is not None:
                    STATEMENTS.failed(kind, error)
                raise
            finally:
                _KIND.reset(current)
                STATEMENTS.latency.observe(kind, time.perf_counter() - started)

        return run

    return decorate
