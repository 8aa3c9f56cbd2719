"""Contract: the proxy's lookups (``lookup_routes``) read together. Concurrent lookups go to
the database as one statement, and each caller gets what the single statement gives it:
the same rows, in the same order. Runs against every backend. The single statement to
compare with is ``lookup``'s: the same rows with every column, one statement a call."""

from __future__ import annotations

import asyncio

from sipfleet.storage import Aor, Dsn, Dsns, RouteBinding, Storage
from sipfleet.storage.batch import ReadBatcher
from tests.storage.conftest import Databases, OpenStorage
from tests.storage.test_location import NOW, routed, save, update

ALICE = Aor("alice", "example.com")  # three bindings: forking
BOB = Aor("bob", "example.com")  # one
CAROL = Aor("carol", "example.com")  # none
DAVE = Aor("dave", "example.com")  # one live, one that expires at NOW + 10
ZOE = Aor("zoë", "exämple.com")  # one: not ASCII, through the JSON or array parameter
LATER = NOW + 20


def routes_batcher(storage: Storage) -> ReadBatcher[tuple[str, str, int], list[object]]:
    batcher = storage.location.routes  # type: ignore[attr-defined]
    assert isinstance(batcher, ReadBatcher)
    return batcher


async def fill(storage: Storage) -> None:
    """One save each, so that the ids follow the order of the calls."""
    await save(storage, update("sip:a1", q=0.5, callid="c1"), aor=ALICE)
    await save(storage, update("sip:a2", callid="c2", path="<sip:lb1;lr>"), aor=ALICE)
    await save(
        storage, update("sip:a3", q=0.5, callid="c3", received="sip:192.0.2.9:5060"), aor=ALICE
    )
    await save(storage, update("sip:b1", q=0.1), aor=BOB)
    await save(storage, update("sip:d1", lifetime=10, callid="d1"), aor=DAVE)
    await save(storage, update("sip:d2", q=0.2, callid="d2"), aor=DAVE)
    await save(storage, update("sip:z1"), aor=ZOE)


def contacts(routes: object) -> list[str]:
    assert isinstance(routes, list)
    return [route.contact for route in routes if isinstance(route, RouteBinding)]


async def single(storage: Storage, aor: Aor, now: int) -> list[RouteBinding]:
    return [routed(binding) for binding in await storage.location.lookup(aor, now=now)]


async def test_concurrent_lookups_go_in_one_statement_each_with_its_own_rows(
    storage: Storage,
) -> None:
    await fill(storage)
    asked = [
        (ALICE, LATER),
        (BOB, LATER),
        (CAROL, LATER),
        (DAVE, LATER),
        (ALICE, LATER),  # the same AOR twice in one batch
        (DAVE, NOW + 5),  # another now: its binding that expires at NOW + 10 is live
        (ZOE, LATER),
    ]
    batcher = routes_batcher(storage)
    before = batcher.batches, batcher.reads
    answers = await asyncio.gather(
        *(storage.location.lookup_routes(aor, now=now) for aor, now in asked)
    )
    assert (batcher.batches, batcher.reads) == (before[0] + 1, before[1] + len(asked))
    assert [contacts(answer) for answer in answers] == [
        ["sip:a2", "sip:a1", "sip:a3"],  # q 1.0 (none), then 0.5 in the order stored
        ["sip:b1"],
        [],
        ["sip:d2"],  # sip:d1 has expired
        ["sip:a2", "sip:a1", "sip:a3"],
        ["sip:d1", "sip:d2"],
        ["sip:z1"],
    ]
    for (aor, now), answer in zip(asked, answers, strict=True):
        assert answer == await single(storage, aor, now)
    assert answers[0] is not answers[4]  # each caller its own list
    assert (answers[0][0].path, answers[0][2].received) == ("<sip:lb1;lr>", "sip:192.0.2.9:5060")


async def test_keys_compare_as_the_single_statement_compares_them(storage: Storage) -> None:
    """User parts differ by case (RFC 3261 §19.1.4), and so do the stored domains: a lookup
    matches the rows its single statement matches (the database compares, in the column's
    collation; a trailing space is the collation's business too), and no others."""
    await fill(storage)
    variants = [
        Aor("Alice", "example.com"),
        Aor("alice", "Example.com"),
        Aor("ALICE", "EXAMPLE.COM"),
        Aor("alice ", "example.com"),
        ALICE,
    ]
    answers = await asyncio.gather(
        *(storage.location.lookup_routes(aor, now=LATER) for aor in variants)
    )
    assert answers[:3] == [[], [], []]
    assert contacts(answers[4]) == ["sip:a2", "sip:a1", "sip:a3"]
    for aor, answer in zip(variants, answers, strict=True):
        assert answer == await single(storage, aor, LATER)


async def test_lookups_missing_on_the_replica_are_read_again_on_the_primary(
    databases: Databases, opened: OpenStorage
) -> None:
    """Without a replication set-up, the 'replica' is a second database we fill by hand."""
    primary, replica = Dsn.parse(databases.migrated()), Dsn.parse(databases.migrated())
    await save(opened(Dsns(primary, (primary,))), update("sip:a@primary"), aor=ALICE)
    await save(opened(Dsns(replica, (replica,))), update("sip:b@replica"), aor=BOB)
    retrying = opened(Dsns(primary, (replica,)), retry_primary_on_miss=True)
    strict = opened(Dsns(primary, (replica,)), retry_primary_on_miss=False)
    for storage, alice in ((retrying, ["sip:a@primary"]), (strict, [])):
        batcher = routes_batcher(storage)
        before = batcher.batches
        answers = await asyncio.gather(
            *(storage.location.lookup_routes(aor, now=NOW) for aor in (ALICE, BOB, CAROL, ALICE))
        )
        assert batcher.batches == before + 1
        assert [contacts(answer) for answer in answers] == [alice, ["sip:b@replica"], [], alice]
        for aor, answer in zip((ALICE, BOB, CAROL), answers, strict=False):  # each alone
            assert await storage.location.lookup_routes(aor, now=NOW) == answer


async def test_a_caller_that_gives_up_does_not_disturb_the_others(storage: Storage) -> None:
    await fill(storage)
    lookups = [
        asyncio.create_task(storage.location.lookup_routes(aor, now=LATER))
        for aor in (ALICE, BOB, DAVE, CAROL)
    ]
    await asyncio.sleep(0)  # all four wait for their batch, which has not left yet
    lookups[1].cancel()  # gives up before its batch leaves
    await asyncio.sleep(0)  # the batch has left
    lookups[2].cancel()  # gives up while its batch runs
    done = await asyncio.gather(*lookups, return_exceptions=True)
    assert [contacts(done[0]), contacts(done[3])] == [["sip:a2", "sip:a1", "sip:a3"], []]
    assert all(isinstance(d, asyncio.CancelledError) for d in done[1:3])
    assert storage.in_flight == 0
    assert contacts(await storage.location.lookup_routes(BOB, now=LATER)) == ["sip:b1"]


async def test_many_concurrent_lookups_take_few_statements(storage: Storage) -> None:
    users = [Aor(f"user{i:03d}", "example.com") for i in range(150)]
    await asyncio.gather(*(save(storage, update(f"sip:{u.username}@h"), aor=u) for u in users[::2]))
    batcher = routes_batcher(storage)
    before = batcher.batches, batcher.reads
    answers = await asyncio.gather(*(storage.location.lookup_routes(u, now=NOW) for u in users))
    batches, reads = batcher.batches - before[0], batcher.reads - before[1]
    assert reads == 150
    assert batches <= 150 / 32  # 150 lookups in a few statements, not 150
    expected = [[f"sip:{u.username}@h"] if i % 2 == 0 else [] for i, u in enumerate(users)]
    assert [contacts(answer) for answer in answers] == expected


async def test_a_lookup_alone_answers_as_one_among_others(storage: Storage) -> None:
    """Alone in its batch (a light load), a lookup takes the plain statement: the same
    rows, in the same order, as when it shares one with others."""
    await fill(storage)
    aors = [ALICE, BOB, CAROL, DAVE, ZOE, Aor("Alice", "example.com"), Aor("alice ", "example.com")]
    for now in (NOW, LATER):
        together = await asyncio.gather(
            *(storage.location.lookup_routes(aor, now=now) for aor in aors)
        )
        alone = [await storage.location.lookup_routes(aor, now=now) for aor in aors]
        assert alone == together
    assert contacts(alone[0]) == ["sip:a2", "sip:a1", "sip:a3"]
    assert contacts(alone[3]) == ["sip:d2"]  # the other expired by LATER
