"""Group commit of REGISTER saves: the batcher's rules (no database), and the contract that a
batch gives exactly what the same saves one by one give (every backend)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sipfleet.storage import Aor, Storage, StorageUnavailable, TooManyContacts
from sipfleet.storage.batch import ReadBatcher, SaveBatcher, SaveOutcome, SaveRequest
from tests.storage.test_location import NOW, SHARED, contacts, flow, flows, save, update


# -- the batcher, with a fake database --------------------------------------------------------
class FakeDatabase:
    """Records each batch; a batch waits until ``release`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None

    async def run(self, requests: Sequence[SaveRequest]) -> list[SaveOutcome]:
        self.batches.append([r.aor.username for r in requests])
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [SaveOutcome([], len(self.batches), False) for _ in requests]


def request(user: str, now: int = NOW, max_contacts: int = 10) -> SaveRequest:
    return SaveRequest(Aor(user, "example.com"), update(f"sip:{user}@h"), now, max_contacts)


async def test_saves_waiting_together_go_together_at_most_lanes_at_a_time() -> None:
    database = FakeDatabase()
    database.release.clear()
    batcher = SaveBatcher(database.run, lanes=2, max_batch=64, min_fill=1)
    first = [asyncio.create_task(batcher.save(request(f"a{i}"))) for i in range(10)]
    await asyncio.sleep(0.01)
    second = [asyncio.create_task(batcher.save(request(f"b{i}"))) for i in range(5)]
    await asyncio.sleep(0.01)
    third = [asyncio.create_task(batcher.save(request(f"c{i}"))) for i in range(3)]
    await asyncio.sleep(0.01)
    assert [len(b) for b in database.batches] == [10, 5]  # both lanes busy: the rest waits
    assert batcher.waiting == 3
    database.release.set()
    outcomes = await asyncio.gather(*first, *second, *third)
    assert [len(b) for b in database.batches] == [10, 5, 3]
    assert [o.after for o in outcomes] == [2] * 15 + [3] * 3  # each got its own batch's
    assert (batcher.batches, batcher.saves, batcher.waiting) == (3, 18, 0)


async def test_another_batch_starts_beside_a_running_one_only_when_enough_wait() -> None:
    database = FakeDatabase()
    database.release.clear()
    batcher = SaveBatcher(database.run, lanes=3, max_batch=64, min_fill=4)
    running = [asyncio.create_task(batcher.save(request(f"a{i}"))) for i in range(2)]
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(batcher.save(request(f"b{i}"))) for i in range(3)]
    await asyncio.sleep(0.01)
    assert [len(b) for b in database.batches] == [2]  # 3 waiting: they wait for the first
    waiting.append(asyncio.create_task(batcher.save(request("b3"))))
    await asyncio.sleep(0.01)
    assert [len(b) for b in database.batches] == [2, 4]  # 4 waiting: a second lane opens
    database.release.set()
    await asyncio.gather(*running, *waiting)


async def test_a_batch_holds_one_save_per_aor_and_one_now_and_limit() -> None:
    database = FakeDatabase()
    batcher = SaveBatcher(database.run, lanes=1, max_batch=3)
    saves = [
        request("alice"),
        request("bob"),
        request("alice"),  # the same AOR again: the next batch
        request("carol", now=NOW + 1),  # another second: another batch
        request("dave", max_contacts=2),  # another limit: another batch
        request("erin"),
        request("frank"),  # the first batch is full (3) by now
    ]
    await asyncio.gather(*(batcher.save(s) for s in saves))
    assert database.batches == [["alice", "bob", "erin"], ["alice", "frank"], ["carol"], ["dave"]]


async def test_a_failed_batch_fails_each_of_its_saves_and_the_next_batch_runs() -> None:
    database = FakeDatabase()
    database.fail = StorageUnavailable("database gone")
    batcher = SaveBatcher(database.run, lanes=1)
    outcomes = await asyncio.gather(
        *(batcher.save(request(f"u{i}")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, StorageUnavailable) for o in outcomes)
    database.fail = None
    assert (await batcher.save(request("later"))).after == 2


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    database = FakeDatabase()
    database.release.clear()
    batcher = SaveBatcher(database.run, lanes=1)
    running = asyncio.create_task(batcher.save(request("running")))
    await asyncio.sleep(0.01)
    queued = [asyncio.create_task(batcher.save(request(f"q{i}"))) for i in range(3)]
    await asyncio.sleep(0.01)
    queued[1].cancel()  # gives up while queued: never sent
    running.cancel()  # gives up while its batch runs: its outcome is dropped
    await asyncio.sleep(0.01)
    database.release.set()
    assert [o.after for o in await asyncio.gather(queued[0], queued[2])] == [2, 2]
    assert database.batches == [["running"], ["q0", "q2"]]


# -- the contract, on every backend ------------------------------------------------------------
def batcher_of(storage: Storage) -> SaveBatcher:
    batcher = storage.location.batcher  # type: ignore[attr-defined]
    assert isinstance(batcher, SaveBatcher)
    return batcher


def aor(name: str) -> Aor:
    return Aor(name, "example.com")


async def test_one_batch_applies_every_rule_as_the_saves_one_by_one(storage: Storage) -> None:
    """Refresh, stale refresh, new AOR, no room, an expired contact back, a refresh at the
    limit: all in one batch, each answered with its AOR's bindings."""
    await save(storage, update("sip:a@1", cseq=5), aor=aor("alice"))
    await save(storage, update("sip:b@1"), aor=aor("bob"))
    await save(storage, update("sip:c@1"), update("sip:c@2"), aor=aor("carol"))
    await save(storage, update("sip:d@1", 60, cseq=9), aor=aor("dave"))
    await save(storage, update("sip:f@1"), update("sip:f@2", q=0.5), aor=aor("frank"))
    later = NOW + 100  # dave's binding has expired by then
    batcher = batcher_of(storage)
    before = batcher.batches

    def again(name: str, contact: str, **fields: object) -> object:
        return save(storage, update(contact, **fields), aor=aor(name), now=later, max_contacts=2)

    alice, bob, carol, dave, erin, frank = await asyncio.gather(
        again("alice", "sip:a@1", cseq=5),  # same Call-ID and CSeq: stale, unchanged
        again("bob", "sip:b@1", callid="call-2"),  # another Call-ID: refreshed
        again("carol", "sip:c@3"),  # no room
        again("dave", "sip:d@1", cseq=1),  # its old row expired: a new binding
        again("erin", "sip:e@1"),  # a new AOR
        again("frank", "sip:f@1", cseq=2),  # a refresh at the limit
        return_exceptions=True,
    )
    assert batcher.batches == before + 1
    [kept] = alice  # type: ignore[misc]
    assert (kept.cseq, kept.expires, kept.last_modified) == (5, NOW + 3600, NOW)
    [refreshed] = bob  # type: ignore[misc]
    assert (refreshed.callid, refreshed.last_modified) == ("call-2", later)
    assert isinstance(carol, TooManyContacts)
    assert (carol.count, carol.limit) == (3, 2)
    [back] = dave  # type: ignore[misc]
    assert (back.cseq, back.expires) == (1, NOW + 3600)
    assert contacts(erin) == ["sip:e@1"]  # type: ignore[arg-type]
    assert [b.contact for b in frank] == ["sip:f@1", "sip:f@2"]  # type: ignore[union-attr]
    assert frank[0].cseq == 2  # type: ignore[index]
    # What the answers said is what is stored; the refused save wrote nothing.
    assert contacts(await storage.location.lookup(aor("carol"), now=later)) == [
        "sip:c@1",
        "sip:c@2",
    ]
    for name, answer in (("alice", alice), ("bob", bob), ("dave", dave), ("frank", frank)):
        assert await storage.location.lookup(aor(name), now=later) == answer


async def test_a_batched_plain_save_leaves_the_flows_of_its_contact(storage: Storage) -> None:
    """A plain binding and RFC 5626 flows with one Contact are separate bindings in a batch
    too: the plain save neither refreshes a flow's row nor finds room in it."""
    for reg_id in (1, 2):
        await save(storage, flow(reg_id), aor=aor("grace"))
    for reg_id in (1, 2, 3):
        await save(storage, flow(reg_id), aor=aor("henry"))
    batcher = batcher_of(storage)
    before = batcher.batches
    grace, henry = await asyncio.gather(
        save(storage, update(SHARED, 600, callid="plain"), aor=aor("grace"), max_contacts=3),
        save(storage, update(SHARED, 600, callid="plain"), aor=aor("henry"), max_contacts=3),
        return_exceptions=True,
    )
    assert batcher.batches == before + 1
    assert flows(grace) == [  # type: ignore[arg-type]
        (SHARED, None, NOW + 600),
        (SHARED, 1, NOW + 3600),
        (SHARED, 2, NOW + 3600),
    ]
    assert isinstance(henry, TooManyContacts)  # three flows leave no room for a fourth
    assert [b.reg_id for b in await storage.location.lookup(aor("henry"), now=NOW)] == [1, 2, 3]


async def test_saves_of_one_aor_at_once_see_each_other(storage: Storage) -> None:
    first, second = await asyncio.gather(
        save(storage, update("sip:a@1", callid="c1")), save(storage, update("sip:a@2", callid="c2"))
    )
    assert contacts(first) == ["sip:a@1"]
    assert contacts(second) == ["sip:a@1", "sip:a@2"]


async def test_many_concurrent_refreshes_go_in_few_batches(storage: Storage) -> None:
    users = [aor(f"user{i:03d}") for i in range(200)]
    await asyncio.gather(*(save(storage, update(f"sip:{u.username}@h"), aor=u) for u in users))
    batcher = batcher_of(storage)
    before = (batcher.batches, batcher.saves)
    answers = await asyncio.gather(
        *(save(storage, update(f"sip:{u.username}@h", cseq=2), aor=u) for u in users)
    )
    batches, saves = batcher.batches - before[0], batcher.saves - before[1]
    assert saves == 200
    assert batches <= 200 / 32
    assert all([b.cseq for b in answer] == [2] for answer in answers)
    assert len(await storage.location.all_bindings(now=NOW)) == 200


async def test_text_outside_latin1_is_stored_and_matched_as_sent(storage: Storage) -> None:
    """A user name, Contact and User-Agent in UTF-8 beyond latin1 (the default character
    set of a MariaDB server started without a configuration): batched refreshes and a save
    of two contacts store them as sent and find the AOR's rows again."""
    users = [aor("δοκιμή"), aor("电话")]
    agent = "Téléphone ☎ 2.0"
    first = await asyncio.gather(
        *(save(storage, update(f"sip:{u.username}@h", user_agent=agent), aor=u) for u in users)
    )
    batcher = batcher_of(storage)
    before = batcher.batches
    again = await asyncio.gather(
        *(
            save(storage, update(f"sip:{u.username}@h", cseq=2, user_agent=agent), aor=u)
            for u in users
        )
    )
    assert batcher.batches == before + 1
    for user, answer in zip(users, again, strict=True):
        [binding] = answer
        assert (binding.contact, binding.user_agent, binding.cseq) == (
            f"sip:{user.username}@h",
            agent,
            2,
        )
        assert await storage.location.lookup(user, now=NOW) == answer
    assert [len(answer) for answer in first] == [1, 1]
    both = await save(
        storage, update("sip:电话@h", cseq=3), update("sip:电话@2", cseq=3), aor=users[1]
    )
    assert contacts(both) == ["sip:电话@2", "sip:电话@h"]


@pytest.mark.parametrize("lifetime", [0, 3600])
async def test_removals_and_multi_contact_saves_are_not_batched(
    storage: Storage, lifetime: int
) -> None:
    await save(storage, update("sip:a@1"))
    batcher = batcher_of(storage)
    before = batcher.saves
    await save(storage, update("sip:a@1", lifetime, cseq=2), update("sip:a@2", cseq=2))
    await save(storage, update("sip:a@2", 0, cseq=3))
    assert batcher.saves == before


class FakeReads:
    """Answers reads from a dict, one call per batch; ``gate`` holds the batches back."""

    def __init__(self, rows: dict[tuple[str, str], tuple[str, str, str]]) -> None:
        self.rows = rows
        self.calls: list[list[tuple[str, str]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def run(self, keys: Sequence[tuple[str, str]]) -> list[Sequence[str] | None]:
        self.calls.append(list(keys))
        await self.gate.wait()
        if self.fail:
            raise StorageUnavailable("down")
        return [self.rows.get(key) for key in keys]


async def test_reads_of_one_loop_turn_go_in_one_batch_and_later_ones_wait_for_a_lane() -> None:
    fake = FakeReads({("a", "x"): ("a", "x", "1"), ("b", "x"): ("b", "x", "2")})
    reads = ReadBatcher(fake.run, lanes=1, max_batch=3)
    fake.gate.clear()
    first = [asyncio.ensure_future(reads.get(k)) for k in [("a", "x"), ("b", "x"), ("a", "x")]]
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(reads.get(k)) for k in [("c", "x"), ("b", "x")]]
    await asyncio.sleep(0.01)
    assert fake.calls == [[("a", "x"), ("b", "x")]]  # one lane busy: the later ones wait
    fake.gate.set()
    assert await asyncio.gather(*first) == [("a", "x", "1"), ("b", "x", "2"), ("a", "x", "1")]
    assert await asyncio.gather(*later) == [None, ("b", "x", "2")]
    assert fake.calls == [[("a", "x"), ("b", "x")], [("c", "x"), ("b", "x")]]


async def test_a_failed_read_batch_fails_its_callers_and_the_next_one_runs() -> None:
    fake = FakeReads({("a", "x"): ("a", "x", "1")})
    reads = ReadBatcher(fake.run)
    fake.fail = True
    with pytest.raises(StorageUnavailable):
        await reads.get(("a", "x"))
    fake.fail = False
    assert await reads.get(("a", "x")) == ("a", "x", "1")


def test_batchers_serve_the_next_loop_after_the_first_closed() -> None:
    """A batcher keeps the loop it runs on (asking for it costs a system call on Python
    3.11); a command that runs one ``asyncio.run`` after another still gets answers."""
    fake = FakeReads({("a", "x"): ("a", "x", "1")})
    reads = ReadBatcher(fake.run)
    saves = SaveBatcher(FakeDatabase().run)

    async def both() -> tuple[object, SaveOutcome]:
        return await reads.get(("a", "x")), await saves.save(request("alice"))

    for _ in range(2):
        found, saved = asyncio.run(both())
        assert found == ("a", "x", "1")
        assert not saved.refused
