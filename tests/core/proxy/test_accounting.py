"""The proxy shell's call records (``core/proxy/accounting.py``) into a real SQLite
``acc``: an answered call, its BYE from either side, a failed call, the sweep of calls
that never got a BYE, and a record the database cannot take for a while (held lock):
written once it can, not lost."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from sipfleet.core.proxy.accounting import CallAccounting
from sipfleet.core.proxy.actions import CallResult
from sipfleet.routing.api import CallContext, CallServices
from sipfleet.storage import Storage
from sipfleet.transport.base import Peer
from tests.core.proxy.messages import request

STARTED = 1_800_000_000.0
CALL_ID = "call-1@198.51.100.7"
PEER = Peer("udp", "198.51.100.7", 5062, "192.0.2.1", 5060)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def context_of(method: str = "INVITE", **fields: Any) -> CallContext:
    found = CallContext(request(method, **fields), PEER, cast(CallServices, object()))
    found.arrived = STARTED
    return found


def result(status: int, reason: str) -> CallResult:
    return CallResult(
        context=context_of(),
        call_id=CALL_ID,
        caller_tag="a1",
        callee_tag="b1",
        caller="sip:alice@example.com",
        caller_shown="sip:anonymous@anonymous.invalid",
        callee="sip:bob@example.com",
        destination="sip:bob@203.0.113.5:5070",
        gateway=None,
        status=status,
        reason=reason,
    )


def bye_from_callee() -> CallContext:
    return context_of(
        "BYE",
        from_="<sip:bob@example.com>;tag=b1",
        to="<sip:alice@example.com>",
        to_tag="a1",
    )


@pytest.fixture
async def writing(storage: Storage) -> AsyncIterator[CallAccounting]:
    """The proxy's accounting with its writer running, on the fixture's clock."""
    accounting = CallAccounting(storage.accounting, "proxy-a", Clock(STARTED))
    writer = asyncio.create_task(accounting.run())
    yield accounting
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer


def clock_of(accounting: CallAccounting) -> Clock:
    assert isinstance(accounting.clock, Clock)
    return accounting.clock


async def test_an_answered_call_then_the_callees_bye(
    storage: Storage, writing: CallAccounting
) -> None:
    accounting = writing
    clock = clock_of(accounting)
    clock.now = STARTED + 2.5
    accounting.result(result(200, "OK"))
    clock.now = STARTED + 62.5
    accounting.bye(bye_from_callee(), caller_tag="a1")
    await accounting.drain()
    (record,) = await storage.accounting.list(call_id=CALL_ID)
    assert (record.start_ms, record.answer_ms, record.end_ms) == (
        1_800_000_000_000,
        1_800_000_002_500,
        1_800_000_062_500,
    )
    assert record.duration_ms == 60_000
    assert record.ended_by == "callee"
    assert record.caller_shown == "sip:anonymous@anonymous.invalid"
    assert record.proxy == "proxy-a"
    assert accounting.counters()["records_written"] == 2
    assert accounting.counters()["records_lost"] == 0


async def test_a_failed_call_is_written_whole(storage: Storage, writing: CallAccounting) -> None:
    clock_of(writing).now = STARTED + 4
    writing.result(result(486, "Busy Here"))
    await writing.drain()
    (record,) = await storage.accounting.list(call_id=CALL_ID)
    assert (record.status, record.reason, record.answer_ms) == (486, "Busy Here", None)
    assert record.end_ms == 1_800_000_004_000
    assert record.duration_ms == 0


async def test_the_sweep_closes_a_call_with_no_bye(
    storage: Storage, writing: CallAccounting
) -> None:
    accounting = writing
    clock = clock_of(accounting)
    clock.now = STARTED + 1
    accounting.result(result(200, "OK"))
    await accounting.drain()
    clock.now = STARTED + 1 + 3600
    sweep = asyncio.create_task(accounting.sweep(max_call_s=600, interval_s=0.01))
    try:
        for _ in range(500):  # bounded: 5 s at most
            (record,) = await storage.accounting.list(call_id=CALL_ID)
            if record.end_ms is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        sweep.cancel()
    assert record.ended_by == "max-duration"
    assert record.duration_ms == 600_000


async def test_a_record_the_database_cannot_take_yet_is_written_later(
    storage: Storage, writing: CallAccounting, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the database's write lock past the busy timeout (2 s): the
    record waits and is written once the lock is gone; nothing is lost."""
    with closing(sqlite3.connect(tmp_path / "proxy.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        writing.result(result(200, "OK"))
        for _ in range(600):  # bounded: 6 s
            if writing.counters()["records_retried"]:
                break
            await asyncio.sleep(0.01)
        assert writing.counters()["records_retried"] >= 1
        assert await storage.accounting.list(call_id=CALL_ID) == []
        other.execute("ROLLBACK")
    async with asyncio.timeout(10):
        await writing.drain()
    (record,) = await storage.accounting.list(call_id=CALL_ID)
    assert record.status == 200
    assert writing.counters()["records_lost"] == 0
    assert "not written" not in caplog.text


async def test_records_queued_together_go_in_few_batches(
    storage: Storage, writing: CallAccounting
) -> None:
    """100 failed calls in one loop turn: two transactions (64 records, then the other
    36 at once, as that many wait), not 100."""
    for n in range(100):
        writing.result(replace(result(503, "Service Unavailable"), call_id=f"call-{n}"))
    await writing.drain()
    assert writing.batches == 2
    assert writing.counters()["records_written"] == 100
    assert len(await storage.accounting.list()) == 100


async def test_a_refused_record_does_not_take_its_batch_mates(
    storage: Storage, writing: CallAccounting, caplog: pytest.LogCaptureFixture
) -> None:
    """A record SQLite refuses for good (a start past 64 bits) in a batch with another
    call's answer and BYE: those are written, it is logged whole and counted lost."""
    writing.result(result(200, "OK"))
    refused = replace(result(486, "Busy Here"), call_id="call-2")
    refused.context.arrived = 1e16  # seconds: 1e19 ms
    writing.result(refused)
    writing.bye(bye_from_callee(), caller_tag="a1")
    await writing.drain()
    assert writing.batches == 1
    (record,) = await storage.accounting.list()
    assert (record.call_id, record.status, record.ended_by) == (CALL_ID, 200, "callee")
    assert writing.counters() == {
        "records_written": 2,
        "records_retried": 0,
        "records_lost": 1,
        "records_waiting": 0,
    }
    (logged,) = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert "call-2" in logged
    assert "too large" in logged
    assert "'failed'" in logged


async def test_at_stop_a_batch_still_in_flight_is_logged(
    writing: CallAccounting, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database cannot take the batch (another process holds its write lock) when
    the proxy stops: its records are logged whole, not dropped silently."""
    with closing(sqlite3.connect(tmp_path / "proxy.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        writing.result(result(200, "OK"))
        writing.bye(bye_from_callee(), caller_tag="a1")
        for _ in range(600):  # bounded: 6 s
            if writing.counters()["records_retried"]:
                break
            await asyncio.sleep(0.01)
        assert writing.counters()["records_waiting"] == 2
        writing.abandon()
        other.execute("ROLLBACK")
    logged = [r.getMessage() for r in caplog.records if "not written (stopping)" in r.getMessage()]
    assert len(logged) == 2
    assert "'answered'" in logged[0]
    assert "'ended'" in logged[1]
    assert all(CALL_ID in line for line in logged)
    assert writing.counters()["records_lost"] == 2
    assert writing.counters()["records_waiting"] == 0
