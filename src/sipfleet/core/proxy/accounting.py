"""Call records (docs/storage.md, "Accounting"): written by the proxy shell, never read back.

The core reports each INVITE's final answer (``CallResult``); a BYE ends the record at
whichever proxy of the pool it reaches (the dialog token tells the caller's tag, so the
hang-up side is known without a table of calls); a sweep closes calls that never got a
BYE. Every write is keyed by (Call-ID, caller's tag, callee's tag), so the order in which
two proxies write the answer and the end does not matter.

Records wait in a bounded backlog for a writer that keeps a few writes in flight. A write
the database cannot take now (down, or past ``database.max_in_flight`` while calls are
routed: overload) is tried again after a pause, in order, rather than lost; calls are
never held up by their records. Only a record the database refuses for good (a value it
will not take), or one past a full backlog, is dropped, logged whole at WARNING: the log
keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from sipfleet.core.proxy.actions import CallResult
from sipfleet.routing.api import CallContext
from sipfleet.storage.errors import StorageError, StorageUnavailable
from sipfleet.storage.interface import AccountingStore
from sipfleet.storage.model import CallRecord, EndedBy

log = logging.getLogger(__name__)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


Write = Callable[[], Awaitable[object]]
MAX_BACKLOG = 100_000  # records waiting (~1 min of writes at 1,500 calls/s with a slow DB)
WRITES_IN_FLIGHT = 8  # from this process: lookups keep the rest of database.max_in_flight
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


class CallAccounting:
    def __init__(
        self, store: AccountingStore, node: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.node = node
        self.clock = clock
        self.written = 0
        self.retried = 0  # writes tried again after the database could not take them
        self.lost = 0  # records refused for good or past a full backlog (each logged whole)
        self._backlog: deque[tuple[Write, object]] = deque()
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- what the shell reports --------------------------------------------------------------
    def result(self, result: CallResult) -> None:
        """An INVITE's final answer: an answered call opens its record, a failed one
        writes it whole."""
        now = _ms(self.clock())
        arrived = result.context.arrived
        answered = 200 <= result.status < 300
        record = CallRecord(
            call_id=result.call_id,
            from_tag=result.caller_tag,
            to_tag=result.callee_tag,
            caller=result.caller,
            caller_shown=result.caller_shown,
            callee=result.callee,
            destination=result.destination,
            gateway=result.gateway,
            status=result.status,
            reason=result.reason,
            start_ms=_ms(arrived) if arrived is not None else now,
            answer_ms=now if answered else None,
            end_ms=None if answered else now,
            duration_ms=None if answered else 0,
            ended_by=None,
            proxy=self.node,
        )
        store = self.store.answered if answered else self.store.failed
        self._queue(lambda: store(record), record)

    def bye(self, context: CallContext, caller_tag: str) -> None:
        """A BYE of a dialog we record-routed: the call ends now."""
        request = context.request
        call_id = request.call_id
        sender, receiver = request.from_.tag or "", request.to.tag or ""
        by_caller = sender == caller_tag
        callee_tag = receiver if by_caller else sender
        end_ms = _ms(self.clock())
        ended_by: EndedBy = "caller" if by_caller else "callee"

        def write() -> Awaitable[bool]:
            store = self.store
            return store.ended(call_id, caller_tag, callee_tag, end_ms=end_ms, ended_by=ended_by)

        what = f"end of call {call_id} ({caller_tag}, {callee_tag}) at {end_ms} by {ended_by}"
        self._queue(write, what)

    def _queue(self, write: Write, what: object) -> None:
        if len(self._backlog) >= MAX_BACKLOG:
            self.lost += 1
            log.warning("call record not written (%d waiting): %r", len(self._backlog), what)
            return
        self._backlog.append((write, what))
        self._idle.clear()
        self._wake.set()

    # -- the writer ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Write what is queued, ``WRITES_IN_FLIGHT`` at a time, until cancelled."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._backlog and self._in_flight < WRITES_IN_FLIGHT:
                    self._in_flight += 1
                    task = asyncio.create_task(self._write(*self._backlog.popleft()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:  # stopping: the storage closes next
                task.cancel()

    async def _write(self, write: Write, what: object) -> None:
        pause = RETRY_FIRST_S
        try:
            while True:
                try:
                    await write()
                    self.written += 1
                    return
                except StorageUnavailable as exc:  # down, or overloaded: not the record's fault
                    self.retried += 1
                    if pause >= RETRY_MAX_S:
                        log.info("call record waits for the database: %s", exc)
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, RETRY_MAX_S)
                except StorageError as exc:  # a value the database will not take
                    self.lost += 1
                    log.warning("call record not written (%s): %r", exc, what)
                    return
        finally:
            self._in_flight -= 1
            if self._backlog:
                self._wake.set()
            elif self._in_flight == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Until every queued record is written (or dropped); the writer must run."""
        await self._idle.wait()

    def abandon(self) -> None:
        """At stop: what is still queued is logged whole (the log keeps it)."""
        while self._backlog:
            _, what = self._backlog.popleft()
            self.lost += 1
            log.warning("call record not written (stopping): %r", what)

    async def sweep(self, max_call_s: int, interval_s: float) -> None:
        """Close the records of calls older than ``max_call_s`` with no BYE, every
        ``interval_s`` (one statement; several proxies may run it at once)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                closed = await self.store.close_overdue(
                    now_ms=_ms(self.clock()), max_duration_ms=max_call_s * 1000
                )
            except StorageUnavailable as exc:
                log.warning("closing overdue call records: %s", exc)
                continue
            if closed:
                log.info("closed %d call records after %d s without a BYE", closed, max_call_s)

    def counters(self) -> dict[str, int]:
        return {
            "records_written": self.written,
            "records_retried": self.retried,
            "records_lost": self.lost,
            "records_waiting": len(self._backlog) + self._in_flight,
        }
