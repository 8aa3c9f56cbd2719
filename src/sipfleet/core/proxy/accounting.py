"""Call records (docs/storage.md, "Accounting"): written by the proxy shell, never read back.

The core reports each INVITE's final answer (``CallResult``); a BYE ends the record at
whichever proxy of the pool it reaches (the dialog token tells the caller's tag, so the
hang-up side is known without a table of calls); a sweep closes calls that never got a
BYE. Every write is keyed by (Call-ID, caller's tag, callee's tag), so the order in which
two proxies write the answer and the end does not matter.

Records wait in a bounded backlog for a writer that sends them in batches: what waits
(up to ``MAX_BATCH`` records) goes in one transaction, one round trip, so under load a
call's records cost the database and this process a fraction of a statement each (the
idea of the registrar's group commit, ``storage/batch.py``). Records hold no call up, so
unlike a REGISTER's save a batch waits ``GATHER_S`` for more to join it: the two records
of each call arrive one datagram at a time, and sent at once they would each go alone.
One batch is in flight whenever records wait; more (up to ``BATCHES_IN_FLIGHT``) only
when ``MIN_FILL`` records wait for them, so the records gather in few large batches
while the database keeps up.
A record goes after those queued before it: a call's answer is in the same batch as its
end or in one sent before it (a later batch may still commit first; the upserts leave
the row right in either order, as they do across proxies).

A batch the database cannot take now (down, or past ``database.max_in_flight`` while
calls are routed: overload) is tried again after a pause, whole, rather than lost; calls
are never held up by their records. A batch the database refuses is written again one
record at a time, so that only the record it refuses for good (a value it will not
take) is dropped, not its batch-mates; that one, or one past a full backlog, is logged
whole at WARNING: the log keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from sipfleet.core.proxy.actions import CallResult
from sipfleet.routing.api import CallContext
from sipfleet.storage.errors import StorageError, StorageUnavailable
from sipfleet.storage.interface import AccountingStore
from sipfleet.storage.model import AccountingWrite, CallRecord, EndedBy

log = logging.getLogger(__name__)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


MAX_BACKLOG = 100_000  # records waiting (~1 min of writes at 1,500 calls/s with a slow DB)
MAX_BATCH = 64  # records in one transaction
MIN_FILL = 16  # records waiting that open a second (third...) batch in flight
GATHER_S = 0.02  # a batch waits this long for more records (~24 at 600 calls/s)
BATCHES_IN_FLIGHT = 4  # from this process: lookups keep the rest of database.max_in_flight
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
        self.batches = 0  # transactions sent (not counting retries): how well records group
        self._backlog: deque[AccountingWrite] = deque()
        self._wake = asyncio.Event()
        self._in_flight = 0  # batches
        self._unconfirmed: dict[int, list[AccountingWrite]] = {}  # in flight, not yet written
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
        self._queue(AccountingWrite("answered" if answered else "failed", record))

    def bye(self, context: CallContext, caller_tag: str) -> None:
        """A BYE of a dialog we record-routed: the call ends now."""
        request = context.request
        call_id = request.call_id
        sender, receiver = request.from_.tag or "", request.to.tag or ""
        by_caller = sender == caller_tag
        callee_tag = receiver if by_caller else sender
        ended_by: EndedBy = "caller" if by_caller else "callee"
        end = CallRecord(
            call_id, caller_tag, callee_tag, end_ms=_ms(self.clock()), ended_by=ended_by
        )
        self._queue(AccountingWrite("ended", end))

    def _queue(self, write: AccountingWrite) -> None:
        if len(self._backlog) >= MAX_BACKLOG:
            self.lost += 1
            log.warning("call record not written (%d waiting): %r", len(self._backlog), write)
            return
        self._backlog.append(write)
        self._idle.clear()
        self._wake.set()

    # -- the writer ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Write what is queued, in batches, until cancelled."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake.wait()
                if len(self._backlog) < MAX_BATCH:
                    await asyncio.sleep(GATHER_S)
                self._wake.clear()
                while self._may_start():
                    self._in_flight += 1
                    task = asyncio.create_task(self._send(self._take()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:  # stopping: the storage closes next
                task.cancel()

    def _may_start(self) -> bool:
        if not self._backlog or self._in_flight >= BATCHES_IN_FLIGHT:
            return False
        return self._in_flight == 0 or len(self._backlog) >= MIN_FILL

    def _take(self) -> list[AccountingWrite]:
        backlog = self._backlog
        return [backlog.popleft() for _ in range(min(MAX_BATCH, len(backlog)))]

    async def _send(self, batch: list[AccountingWrite]) -> None:
        self.batches += 1
        key = id(batch)
        self._unconfirmed[key] = batch
        try:
            try:
                await self._write(batch)
            except StorageError:  # one of them, at least, will never be taken: find it
                for n, write in enumerate(batch):
                    self._unconfirmed[key] = batch[n:]
                    await self._write_alone(write)
        finally:
            self._in_flight -= 1
            self._unconfirmed.pop(key, None)
            if self._backlog:
                self._wake.set()
            elif self._in_flight == 0:
                self._idle.set()

    async def _write_alone(self, write: AccountingWrite) -> None:
        try:
            await self._write([write])
        except StorageError as exc:  # a value the database will not take
            self.lost += 1
            log.warning("call record not written (%s): %r", exc, write)

    async def _write(self, writes: list[AccountingWrite]) -> None:
        """Written, or ``StorageError`` when refused; tried again, after a growing pause,
        while the database cannot take them now (not the records' fault)."""
        pause = RETRY_FIRST_S
        while True:
            try:
                await self.store.write(writes)
            except StorageUnavailable as exc:
                self.retried += len(writes)
                if pause >= RETRY_MAX_S:
                    log.info("%d call records wait for the database: %s", len(writes), exc)
                await asyncio.sleep(pause)
                pause = min(2 * pause, RETRY_MAX_S)
            else:
                self.written += len(writes)
                return

    async def drain(self) -> None:
        """Until every queued record is written (or dropped); the writer must run."""
        await self._idle.wait()

    def abandon(self) -> None:
        """At stop: what is still queued, and what is in flight unconfirmed, is logged
        whole (the log keeps it). A batch in flight may still reach the database: a
        record written again from the log changes nothing."""
        unconfirmed = [write for batch in self._unconfirmed.values() for write in batch]
        self._unconfirmed.clear()
        for write in (*unconfirmed, *self._backlog):
            self.lost += 1
            log.warning("call record not written (stopping): %r", write)
        self._backlog.clear()

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
            "records_waiting": len(self._backlog) + sum(map(len, self._unconfirmed.values())),
        }
