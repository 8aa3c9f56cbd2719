"""The proxy shell's call records (``core/proxy/accounting.py``) into a real SQLite
``acc``: an answered call, its BYE from either side, a failed call, the sweep of calls
that never got a BYE, and a write the database refuses (logged whole, counted)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import cast

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


def context_of(method: str = "INVITE", **fields: str) -> CallContext:
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


async def test_an_answered_call_then_the_callees_bye(storage: Storage) -> None:
    clock = Clock(STARTED + 2.5)
    accounting = CallAccounting(storage.accounting, "proxy-a", clock)
    await accounting.result(result(200, "OK"))
    clock.now = STARTED + 62.5
    await accounting.bye(bye_from_callee(), caller_tag="a1")
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
    assert accounting.counters() == {"records_written": 2, "records_lost": 0}


async def test_a_failed_call_is_written_whole(storage: Storage) -> None:
    accounting = CallAccounting(storage.accounting, "proxy-a", Clock(STARTED + 4))
    await accounting.result(result(486, "Busy Here"))
    (record,) = await storage.accounting.list(call_id=CALL_ID)
    assert (record.status, record.reason, record.answer_ms) == (486, "Busy Here", None)
    assert record.end_ms == 1_800_000_004_000
    assert record.duration_ms == 0


async def test_the_sweep_closes_a_call_with_no_bye(storage: Storage) -> None:
    clock = Clock(STARTED + 1)
    accounting = CallAccounting(storage.accounting, "proxy-a", clock)
    await accounting.result(result(200, "OK"))
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


async def test_a_refused_write_is_logged_whole_and_counted(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the database's write lock past the busy timeout."""
    accounting = CallAccounting(storage.accounting, "proxy-a", Clock(STARTED + 1))
    with closing(sqlite3.connect(tmp_path / "proxy.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with caplog.at_level(logging.WARNING):
            await accounting.result(result(200, "OK"))
        other.execute("ROLLBACK")
    assert accounting.counters() == {"records_written": 0, "records_lost": 1}
    assert CALL_ID in caplog.text
    assert "sip:alice@example.com" in caplog.text
