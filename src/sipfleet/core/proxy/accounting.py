"""Call records (docs/storage.md, "Accounting"): written by the proxy shell, never read back.

The core reports each INVITE's final answer (``CallResult``); a BYE ends the record at
whichever proxy of the pool it reaches (the dialog token tells the caller's tag, so the
hang-up side is known without a table of calls); a sweep closes calls that never got a
BYE. Every write is keyed by (Call-ID, caller's tag, callee's tag), so the order in which
two proxies write the answer and the end does not matter.

A write the database refuses (down, overloaded, a value it will not take) is logged
whole at WARNING: the log keeps the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from sipfleet.core.proxy.actions import CallResult
from sipfleet.routing.api import CallContext
from sipfleet.storage.errors import StorageError, StorageUnavailable
from sipfleet.storage.interface import AccountingStore
from sipfleet.storage.model import CallRecord

log = logging.getLogger(__name__)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class CallAccounting:
    def __init__(
        self, store: AccountingStore, node: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.node = node
        self.clock = clock
        self.written = 0
        self.lost = 0  # writes the database refused (each logged whole)

    async def result(self, result: CallResult) -> None:
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
        write = self.store.answered if answered else self.store.failed
        await self._write(write(record), record)

    async def bye(self, context: CallContext, caller_tag: str) -> None:
        """A BYE of a dialog we record-routed: the call ends now."""
        request = context.request
        sender, receiver = request.from_.tag or "", request.to.tag or ""
        by_caller = sender == caller_tag
        callee_tag = receiver if by_caller else sender
        ended = self.store.ended(
            request.call_id,
            caller_tag,
            callee_tag,
            end_ms=_ms(self.clock()),
            ended_by="caller" if by_caller else "callee",
        )
        await self._write(ended, f"BYE of {request.call_id} ({caller_tag}, {callee_tag})")

    async def _write(self, write: Awaitable[object], what: object) -> None:
        try:
            await write
            self.written += 1
        except StorageError as exc:  # unreachable, overloaded, or a value it refused
            self.lost += 1
            log.warning("call record not written (%s): %r", exc, what)

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
        return {"records_written": self.written, "records_lost": self.lost}
