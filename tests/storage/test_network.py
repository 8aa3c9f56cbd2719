"""The network backends' time limit per query (network.py ``_within``): too slow is a
time-out, a caller cancelled from outside stays cancelled, an answer in time leaves no
cancellation behind."""

from __future__ import annotations

import asyncio

import pytest

from sipfleet.storage.errors import StorageError
from sipfleet.storage.network import _within
from sipfleet.storage.pool import Pool

Connection = str


async def _connect() -> Connection:
    return "connection"


async def _close(conn: Connection) -> None:
    return None


def _pool() -> Pool[Connection]:
    return Pool("test", 1, _connect, _close, lambda exc: StorageError(str(exc)))


async def _answer_after(seconds: float) -> str:
    async def work(conn: Connection) -> str:
        await asyncio.sleep(seconds)
        return f"answer on {conn}"

    return await _within(0.05, _pool(), work, asyncio.get_running_loop())


async def test_an_answer_within_the_limit_leaves_the_caller_uncancelled() -> None:
    assert await _answer_after(0.0) == "answer on connection"
    await asyncio.sleep(0.1)  # past the limit: its timer was withdrawn
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_no_answer_within_the_limit_is_a_time_out_and_the_caller_goes_on() -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await _answer_after(10.0)
    assert asyncio.get_running_loop().time() - started < 1.0
    await asyncio.sleep(0)  # not cancelled: the time-out took its cancellation back
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_caller_cancelled_from_outside_is_cancelled_not_timed_out() -> None:
    query = asyncio.create_task(_answer_after(10.0))
    await asyncio.sleep(0.01)
    query.cancel()
    with pytest.raises(asyncio.CancelledError):
        await query
    assert query.cancelled()
