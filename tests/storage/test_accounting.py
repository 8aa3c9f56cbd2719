"""Contract: call records (``acc``, storage.accounting), on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from sipfleet.storage import (
    AccountingWrite,
    CallRecord,
    EndedBy,
    InvalidInput,
    Storage,
    StorageError,
    StorageUnavailable,
)
from sipfleet.storage.schema import (
    CALLID_LEN,
    GW_NAME_LEN,
    PROXY_NAME_LEN,
    SHORT_TEXT_LEN,
    TAG_LEN,
    URI_LEN,
)

T0 = 1_700_000_000_000  # unix ms
HOUR = 3_600_000


def answer(call_id: str = "c1@pbx", *, start: int = T0, to_tag: str = "callee-1") -> CallRecord:
    """What the proxy writes when it sends a call's 2xx upstream (1.5 s after the INVITE)."""
    return CallRecord(
        call_id,
        "caller-1",
        to_tag,
        caller="sip:alice@example.com",
        caller_shown="sip:anonymous@anonymous.invalid",
        callee="sip:bob@example.com",
        destination="sip:bob@192.0.2.7:5062",
        gateway=None,
        status=200,
        reason="OK",
        start_ms=start,
        answer_ms=start + 1500,
        proxy="proxy1",
    )


def failure(call_id: str = "f1@pbx", *, start: int = T0, status: int = 486) -> CallRecord:
    return CallRecord(
        call_id,
        "caller-9",
        "callee-9",
        caller="sip:carol@example.com",
        caller_shown="sip:carol@example.com",
        callee="sip:+4930123@example.com",
        destination="sip:0030123@gw-a.example.net",
        gateway="gw-a",
        status=status,
        reason="Busy Here",
        start_ms=start,
        end_ms=start + 4000,
        proxy="proxy2",
    )


def key(record: CallRecord) -> tuple[str, str, str]:
    return record.call_id, record.from_tag, record.to_tag


async def only(storage: Storage) -> CallRecord:
    [record] = await storage.accounting.list()
    assert record.id is not None
    return replace(record, id=None)


async def test_answered_then_ended(storage: Storage) -> None:
    call = answer()
    await storage.accounting.answered(call)
    assert await only(storage) == call  # open: no end, no duration

    end = T0 + 1500 + 61_234
    assert await storage.accounting.ended(*key(call), end_ms=end, ended_by="callee")
    assert await only(storage) == replace(call, end_ms=end, duration_ms=61_234, ended_by="callee")


async def test_the_bye_written_before_the_answer(storage: Storage) -> None:
    """The BYE passed another proxy, which wrote it before the answer was stored."""
    call = answer()
    end = T0 + 1500 + 9_000
    assert await storage.accounting.ended(*key(call), end_ms=end, ended_by="caller")
    partial = await only(storage)
    assert partial == CallRecord(*key(call), end_ms=end, ended_by="caller")

    await storage.accounting.answered(call)
    assert await only(storage) == replace(call, end_ms=end, duration_ms=9_000, ended_by="caller")


async def test_the_first_bye_wins(storage: Storage) -> None:
    call = answer()
    await storage.accounting.answered(call)
    assert await storage.accounting.ended(*key(call), end_ms=T0 + 5000, ended_by="caller")
    closed = await only(storage)
    # A retransmission, and the other side's BYE crossing it: nothing changes.
    assert not await storage.accounting.ended(*key(call), end_ms=T0 + 5000, ended_by="caller")
    assert not await storage.accounting.ended(*key(call), end_ms=T0 + 5200, ended_by="callee")
    assert await only(storage) == closed


async def test_the_first_bye_wins_before_the_answer_too(storage: Storage) -> None:
    call = answer()
    assert await storage.accounting.ended(*key(call), end_ms=T0 + 5000, ended_by="callee")
    assert not await storage.accounting.ended(*key(call), end_ms=T0 + 5100, ended_by="caller")
    await storage.accounting.answered(call)
    assert await only(storage) == replace(
        call, end_ms=T0 + 5000, duration_ms=3500, ended_by="callee"
    )


async def test_a_repeated_answer_keeps_one_row(storage: Storage) -> None:
    call = answer()
    await storage.accounting.answered(call)
    await storage.accounting.ended(*key(call), end_ms=T0 + 2500, ended_by="caller")
    await storage.accounting.answered(call)  # written again (a retried write)
    assert await only(storage) == replace(
        call, end_ms=T0 + 2500, duration_ms=1000, ended_by="caller"
    )


async def test_failed_calls(storage: Storage) -> None:
    busy = failure()
    await storage.accounting.failed(busy)
    assert await only(storage) == replace(busy, duration_ms=0)
    # The same failure written twice: no error, the first one stays.
    await storage.accounting.failed(replace(busy, end_ms=T0 + 9999, reason="again"))
    assert await only(storage) == replace(busy, duration_ms=0)
    # A failed call has no BYE to take; one that arrives anyway changes nothing.
    assert not await storage.accounting.ended(*key(busy), end_ms=T0 + 10_000, ended_by="caller")
    assert await only(storage) == replace(busy, duration_ms=0)


async def test_forked_legs_of_one_call_are_rows_of_their_own(storage: Storage) -> None:
    await storage.accounting.answered(answer(to_tag="phone-a"))
    await storage.accounting.answered(answer(to_tag="phone-b"))
    assert [r.to_tag for r in await storage.accounting.list()] == ["phone-a", "phone-b"]


async def test_writes_without_their_fields_are_refused(storage: Storage) -> None:
    with pytest.raises(InvalidInput, match="answer_ms"):
        await storage.accounting.answered(replace(answer(), answer_ms=None))
    with pytest.raises(InvalidInput, match="end_ms"):
        await storage.accounting.failed(replace(failure(), end_ms=None))
    with pytest.raises(InvalidInput, match="ended_by"):
        await storage.accounting.ended("c", "a", "b", end_ms=T0, ended_by="nobody")  # type: ignore[arg-type]
    assert await storage.accounting.list() == []


async def test_close_overdue(storage: Storage) -> None:
    limit = 2 * HOUR
    now = T0 + 10 * HOUR
    overdue = answer("overdue", start=now - limit - 5000)  # answered 3.5 s past the limit
    recent = answer("recent", start=now - limit)  # answered 1.5 s inside it
    ended = answer("ended", start=T0)
    await storage.accounting.answered(overdue)
    await storage.accounting.answered(recent)
    await storage.accounting.answered(ended)
    await storage.accounting.ended(*key(ended), end_ms=T0 + 2000, ended_by="caller")
    await storage.accounting.failed(failure("failed", start=T0))
    await storage.accounting.ended("partial", "x", "y", end_ms=T0, ended_by="caller")
    before = {r.call_id: r for r in await storage.accounting.list()}

    assert await storage.accounting.close_overdue(now_ms=now, max_duration_ms=limit) == 1
    after = {r.call_id: r for r in await storage.accounting.list()}
    answered_at = overdue.answer_ms
    assert answered_at is not None
    assert after["overdue"] == replace(
        before["overdue"],
        end_ms=answered_at + limit,
        duration_ms=limit,
        ended_by="max-duration",
    )
    assert {k: v for k, v in after.items() if k != "overdue"} == {
        k: v for k, v in before.items() if k != "overdue"
    }
    # Idempotent; and the late BYE of a closed call changes nothing.
    assert await storage.accounting.close_overdue(now_ms=now, max_duration_ms=limit) == 0
    assert not await storage.accounting.ended(*key(overdue), end_ms=now, ended_by="caller")
    assert await storage.accounting.list() == list(after.values())


async def test_close_overdue_on_several_proxies_at_once(storage: Storage) -> None:
    for n in range(20):
        await storage.accounting.answered(answer(f"long-{n}", start=T0 + n))
    closed = await asyncio.gather(
        *(
            storage.accounting.close_overdue(now_ms=T0 + 3 * HOUR, max_duration_ms=HOUR)
            for _ in range(4)
        )
    )
    assert sum(closed) == 20
    assert {r.ended_by for r in await storage.accounting.list()} == {"max-duration"}


async def test_concurrent_byes_leave_one_end(storage: Storage) -> None:
    call = answer()
    await storage.accounting.answered(call)
    ends = [T0 + 3000 + n for n in range(6)]
    await asyncio.gather(
        *(storage.accounting.ended(*key(call), end_ms=end, ended_by="caller") for end in ends)
    )
    record = await only(storage)
    assert record.end_ms in ends
    assert record.duration_ms == record.end_ms - (T0 + 1500)


async def test_list_filters_and_order(storage: Storage) -> None:
    # Written out of order; two start at the same millisecond (then: in id order).
    starts = {"c": T0 + 2000, "a": T0, "b": T0 + 1000, "b2": T0 + 1000, "d": T0 + 3000}
    for call_id, start in starts.items():
        await storage.accounting.answered(answer(call_id, start=start))
    await storage.accounting.ended("partial", "x", "y", end_ms=T0, ended_by="caller")
    listing = storage.accounting.list

    assert [r.call_id for r in await listing()] == ["a", "b", "b2", "c", "d", "partial"]
    assert [r.call_id for r in await listing(since_ms=T0 + 1000)] == ["b", "b2", "c", "d"]
    assert [r.call_id for r in await listing(until_ms=T0 + 2000)] == ["a", "b", "b2"]
    window = await listing(since_ms=T0 + 1000, until_ms=T0 + 3000, limit=2)
    assert [r.call_id for r in window] == ["b", "b2"]
    assert [r.call_id for r in await listing(call_id="c")] == ["c"]
    assert await listing(call_id="c", since_ms=T0 + 2001) == []
    assert [r.call_id for r in await listing(limit=1)] == ["a"]
    ids = [r.id for r in await listing()]
    assert len(set(ids)) == len(ids)


async def test_oversized_values_are_cut_not_refused(storage: Storage) -> None:
    long_uri = "sip:" + "x" * 2000 + "@example.com"
    call = replace(
        answer("i" * 1000),
        from_tag="f" * 500,
        to_tag="t" * 500,
        caller=long_uri,
        caller_shown=long_uri,
        callee=long_uri,
        destination=long_uri,
        gateway="g" * 300,
        reason="r" * 1000,
        proxy="p" * 300,
    )
    await storage.accounting.answered(call)
    # The BYE carries the same long key: cut the same way, it meets the row.
    assert await storage.accounting.ended(*key(call), end_ms=T0 + 2500, ended_by="callee")
    [stored] = await storage.accounting.list(call_id=call.call_id)
    assert stored.call_id == "i" * CALLID_LEN
    assert (stored.from_tag, stored.to_tag) == ("f" * TAG_LEN, "t" * TAG_LEN)
    assert stored.caller == stored.callee == stored.destination == long_uri[:URI_LEN]
    assert stored.gateway == "g" * GW_NAME_LEN
    assert stored.reason == "r" * SHORT_TEXT_LEN
    assert stored.proxy == "p" * PROXY_NAME_LEN
    assert (stored.duration_ms, stored.ended_by) == (1000, "callee")


async def test_values_that_look_like_sql_are_stored_verbatim(storage: Storage) -> None:
    nasty = [
        "x'); DROP TABLE acc; --",
        '"quoted" \\ back\\slash',
        "%s %(name)s ? $1 :name",
        "ünïcödé ☎ 𝄞",
        "tab\there",
    ]
    for n, text in enumerate(nasty):
        call = replace(
            answer(f"{text}#{n}"),
            from_tag=text,
            to_tag=text,
            caller=f"sip:{text}@example.com",
            reason=text,
        )
        await storage.accounting.answered(call)
        assert await storage.accounting.ended(*key(call), end_ms=T0 + 2000, ended_by="caller")
        [stored] = await storage.accounting.list(call_id=call.call_id)
        assert (stored.call_id, stored.from_tag, stored.to_tag, stored.reason) == (
            f"{text}#{n}",
            text,
            text,
            text,
        )
        assert stored.caller == f"sip:{text}@example.com"
    assert len(await storage.accounting.list()) == len(nasty)


# -- several writes in one transaction (the proxy's writer batches its backlog) -------------


def ended(record: CallRecord, end_ms: int, by: EndedBy) -> AccountingWrite:
    return AccountingWrite("ended", CallRecord(*key(record), end_ms=end_ms, ended_by=by))


def mixed_writes(prefix: str) -> list[AccountingWrite]:
    """Several calls' events, as a proxy queues them: answers and their BYEs (one from each
    side of the same call: the first wins), a BYE written before its answer (it reached
    another proxy first), failures, an answer and a failure written twice."""
    talked, early, both = (answer(f"{prefix}{name}@pbx") for name in ("talked", "early", "both"))
    busy = failure(f"{prefix}busy@pbx")
    return [
        AccountingWrite("answered", talked),
        AccountingWrite("failed", busy),
        ended(early, T0 + 9000, "caller"),
        AccountingWrite("answered", both),
        ended(talked, T0 + 61_500, "callee"),
        AccountingWrite("answered", early),
        ended(both, T0 + 4000, "caller"),
        ended(both, T0 + 4100, "callee"),
        AccountingWrite("answered", talked),
        AccountingWrite("failed", replace(busy, end_ms=T0 + 9999)),
    ]


async def rows_of(storage: Storage, prefix: str) -> list[CallRecord]:
    """The rows of the calls named ``prefix…``, without the prefix and the row id, by
    Call-ID (a batch inserts by event: its row ids come in another order)."""
    records = [
        replace(record, call_id=record.call_id.removeprefix(prefix), id=None)
        for record in await storage.accounting.list()
        if record.call_id.startswith(prefix)
    ]
    return sorted(records, key=lambda record: record.call_id)


async def test_a_batch_gives_the_rows_of_its_writes_one_by_one(storage: Storage) -> None:
    await storage.accounting.write(mixed_writes("batch-"))
    for write in mixed_writes("alone-"):
        await storage.accounting.write([write])
    in_batch = await rows_of(storage, "batch-")
    assert in_batch == await rows_of(storage, "alone-")
    by_call = {record.call_id: record for record in in_batch}
    assert sorted(by_call) == ["both@pbx", "busy@pbx", "early@pbx", "talked@pbx"]
    assert (by_call["talked@pbx"].duration_ms, by_call["talked@pbx"].ended_by) == (60_000, "callee")
    assert (by_call["both@pbx"].end_ms, by_call["both@pbx"].ended_by) == (T0 + 4000, "caller")
    assert (by_call["early@pbx"].duration_ms, by_call["early@pbx"].status) == (7500, 200)
    assert (by_call["busy@pbx"].end_ms, by_call["busy@pbx"].duration_ms) == (T0 + 4000, 0)


async def test_a_batch_of_many_calls(storage: Storage) -> None:
    calls = [answer(f"c{n}@pbx", start=T0 + n) for n in range(64)]
    await storage.accounting.write(
        [AccountingWrite("answered", call) for call in calls]
        + [ended(call, T0 + 10_000, "caller") for call in calls]
    )
    records = await storage.accounting.list()
    assert [record.call_id for record in records] == [call.call_id for call in calls]
    assert {record.duration_ms for record in records} == {10_000 - 1500 - n for n in range(64)}


async def test_a_record_the_database_refuses_fails_its_whole_batch(storage: Storage) -> None:
    """Nothing of the batch is written; alone, its other records are (what the proxy's
    writer then does to keep them)."""
    good, other = answer("good@pbx"), failure("other@pbx")
    refused = answer("refused@pbx", start=2**63)  # past BIGINT
    batch = [AccountingWrite("answered", good), AccountingWrite("answered", refused)]
    batch.append(AccountingWrite("failed", other))
    with pytest.raises(StorageError) as refusal:
        await storage.accounting.write(batch)
    assert not isinstance(refusal.value, StorageUnavailable)
    assert await storage.accounting.list() == []
    with pytest.raises(StorageError):
        await storage.accounting.write([batch[1]])
    await storage.accounting.write([batch[0]])
    await storage.accounting.write([batch[2]])
    assert [r.call_id for r in await storage.accounting.list()] == ["good@pbx", "other@pbx"]


async def test_a_batch_with_a_write_missing_its_fields_is_refused_before_sending(
    storage: Storage,
) -> None:
    batch = [AccountingWrite("answered", answer()), ended(answer("c2@pbx"), T0, "caller")]
    batch.append(AccountingWrite("ended", CallRecord("c3@pbx", "a", "b", end_ms=T0)))
    with pytest.raises(InvalidInput, match=r"^ended_by: ended needs it \('c3@pbx'\)"):
        await storage.accounting.write(batch)
    assert await storage.accounting.list() == []
