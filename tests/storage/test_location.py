"""Contract: bindings (save, refresh, removal, CSeq order, RFC 5626 flows, max contacts,
expiry, purge, replicas). Runs unchanged against every backend."""

from __future__ import annotations

import asyncio

import pytest

from sipfleet.storage import (
    Aor,
    Binding,
    BindingUpdate,
    Dsn,
    Dsns,
    InvalidInput,
    RouteBinding,
    Storage,
    StorageOverloaded,
    TooManyContacts,
)
from tests.storage.conftest import Databases, OpenStorage

NOW = 1_700_000_000
ALICE = Aor("alice", "example.com")
BOB = Aor("bob", "example.com")


def update(
    contact: str, lifetime: int = 3600, callid: str = "call-1", cseq: int = 1, **fields: object
) -> BindingUpdate:
    """A Contact of a REGISTER sent at NOW; ``lifetime`` 0 asks for removal."""
    expires = NOW + lifetime if lifetime else 0
    return BindingUpdate(contact, expires, callid, cseq, **fields)  # type: ignore[arg-type]


def contacts(bindings: list[Binding]) -> list[str]:
    return sorted(b.contact for b in bindings)


async def save(
    storage: Storage,
    *updates: BindingUpdate,
    aor: Aor = ALICE,
    now: int = NOW,
    max_contacts: int = 10,
) -> list[Binding]:
    return await storage.location.save(aor, list(updates), now=now, max_contacts=max_contacts)


async def test_save_stores_every_column_and_returns_the_bindings(storage: Storage) -> None:
    full = update(
        "sip:alice@192.0.2.1:5060;transport=tcp",
        q=0.5,
        received="sip:198.51.100.7:40123",
        path="<sip:lb1.example.com;lr;ft=abc>",
        flags=3,
        cflags=4,
        user_agent="Phone/1.0 (é)",
        socket="udp:10.0.0.1:5070",
        methods="INVITE,ACK,BYE",
        instance="urn:uuid:00000000-0000-0000-0000-000000000001",
        reg_id=1,
        flow="ft-abc",
    )
    result = await save(storage, full, update("sip:alice@192.0.2.2"))
    assert contacts(result) == ["sip:alice@192.0.2.1:5060;transport=tcp", "sip:alice@192.0.2.2"]
    stored = next(b for b in result if b.contact == full.contact)
    assert (stored.username, stored.domain) == ("alice", "example.com")
    assert (stored.expires, stored.q, stored.callid, stored.cseq) == (NOW + 3600, 0.5, "call-1", 1)
    assert (stored.received, stored.path) == (full.received, full.path)
    assert (stored.flags, stored.cflags, stored.user_agent) == (3, 4, "Phone/1.0 (é)")
    assert (stored.socket, stored.methods, stored.flow) == (full.socket, full.methods, "ft-abc")
    assert (stored.instance, stored.reg_id) == (full.instance, 1)
    assert stored.last_modified == NOW
    assert len(stored.ruid) >= 16
    plain = next(b for b in result if b.contact == "sip:alice@192.0.2.2")
    assert (plain.q, plain.instance, plain.reg_id, plain.path) == (None, None, None, None)
    assert await storage.location.lookup(ALICE, now=NOW) == result


async def test_refresh_keeps_id_and_ruid_and_updates_expiry(storage: Storage) -> None:
    [first] = await save(storage, update("sip:a@1", 600, cseq=1))
    [again] = await save(storage, update("sip:a@1", 1200, cseq=2), now=NOW + 10)
    assert (again.id, again.ruid) == (first.id, first.ruid)
    assert (again.expires, again.cseq, again.last_modified) == (NOW + 1200, 2, NOW + 10)


async def test_zero_expiry_removes_only_that_contact(storage: Storage) -> None:
    await save(storage, update("sip:a@1"), update("sip:a@2"))
    result = await save(storage, update("sip:a@1", 0, cseq=2))
    assert contacts(result) == ["sip:a@2"]
    assert contacts(await storage.location.lookup(ALICE, now=NOW)) == ["sip:a@2"]


async def test_contacts_differing_in_case_are_different_bindings(storage: Storage) -> None:
    result = await save(storage, update("sip:Bob@host"), update("sip:bob@host"))
    assert contacts(result) == ["sip:Bob@host", "sip:bob@host"]


async def test_same_call_id_with_old_cseq_changes_nothing(storage: Storage) -> None:
    """RFC 3261 §10.3 step 7: a CSeq not above the stored one (same Call-ID) is ignored."""
    await save(storage, update("sip:a@1", 600, cseq=5))
    for cseq in (5, 4):
        [kept] = await save(storage, update("sip:a@1", 3000, cseq=cseq))
        assert (kept.expires, kept.cseq) == (NOW + 600, 5)
    [kept] = await save(storage, update("sip:a@1", 0, cseq=3))  # a late removal
    assert kept.contact == "sip:a@1"
    [newer] = await save(storage, update("sip:a@1", 3000, cseq=6))
    assert (newer.expires, newer.cseq) == (NOW + 3000, 6)


async def test_cseq_rule_applies_per_contact_in_a_multi_contact_request(storage: Storage) -> None:
    await save(storage, update("sip:a@1", 600, cseq=5), update("sip:a@2", 600, cseq=5))
    result = await save(
        storage,
        update("sip:a@1", 3000, cseq=4),
        update("sip:a@2", 0, cseq=4),
        update("sip:a@3", 900, cseq=4),
    )
    assert [(b.contact, b.expires, b.cseq) for b in sorted(result, key=lambda b: b.contact)] == [
        ("sip:a@1", NOW + 600, 5),
        ("sip:a@2", NOW + 600, 5),
        ("sip:a@3", NOW + 900, 4),
    ]
    result = await save(storage, update("sip:a@1", 3000, cseq=6), update("sip:a@2", 0, cseq=6))
    assert [(b.contact, b.expires) for b in sorted(result, key=lambda b: b.contact)] == [
        ("sip:a@1", NOW + 3000),
        ("sip:a@3", NOW + 900),
    ]


async def test_other_call_id_replaces_whatever_its_cseq(storage: Storage) -> None:
    await save(storage, update("sip:a@1", 600, callid="old", cseq=50))
    [now_bound] = await save(storage, update("sip:a@1", 900, callid="rebooted", cseq=1))
    assert (now_bound.callid, now_bound.cseq, now_bound.expires) == ("rebooted", 1, NOW + 900)


async def test_instance_and_reg_id_replace_the_previous_flow(storage: Storage) -> None:
    """RFC 5626 §6: same instance and reg-id is the same flow, even from a new address."""
    instance = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    await save(
        storage,
        update("sip:a@10.0.0.1:5060", instance=instance, reg_id=1, callid="c", cseq=1),
        update("sip:a@10.0.0.1:5062", instance=instance, reg_id=2, callid="c", cseq=1),
        update("sip:a@desk"),
    )
    moved = update("sip:a@10.9.9.9:6000", instance=instance, reg_id=1, callid="c2", cseq=1)
    result = await save(storage, moved)
    assert contacts(result) == ["sip:a@10.0.0.1:5062", "sip:a@10.9.9.9:6000", "sip:a@desk"]
    # The old flow's REGISTER arriving late (same Call-ID, lower CSeq) changes nothing.
    stale = update("sip:a@10.9.9.9:6000", 0, instance=instance, reg_id=1, callid="c2", cseq=0)
    assert contacts(await save(storage, stale)) == contacts(result)


PHONE = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"
SHARED = "sip:a@10.0.0.1:5060"  # one transport: both flows carry the same Contact


def flow(reg_id: int, contact: str = SHARED, lifetime: int = 3600, cseq: int = 1) -> BindingUpdate:
    """A REGISTER of one RFC 5626 flow of PHONE (each flow has its own Call-ID)."""
    return update(contact, lifetime, f"flow-{reg_id}", cseq, instance=PHONE, reg_id=reg_id)


def flows(bindings: list[Binding]) -> list[tuple[str, int | None, int]]:
    """(contact, reg-id, expires) of each binding, plain ones (no reg-id) first."""
    return sorted(((b.contact, b.reg_id, b.expires) for b in bindings), key=_by_flow)


def _by_flow(row: tuple[str, int | None, int]) -> tuple[str, int, int]:
    contact, reg_id, expires = row
    return contact, reg_id or 0, expires


async def test_two_flows_with_one_contact_are_two_bindings(storage: Storage) -> None:
    """RFC 5626 §6: a flow is keyed by (AOR, instance, reg-id), not by its Contact."""
    await save(storage, flow(1))
    both = await save(storage, flow(2, lifetime=600))
    assert flows(both) == [(SHARED, 1, NOW + 3600), (SHARED, 2, NOW + 600)]
    # Each refresh keeps the other flow, and its own binding (id, ruid).
    first = {b.reg_id: b for b in both}
    refreshed = await save(storage, flow(1, lifetime=900, cseq=2))
    assert flows(refreshed) == [(SHARED, 1, NOW + 900), (SHARED, 2, NOW + 600)]
    assert {(b.reg_id, b.id, b.ruid) for b in refreshed} == {(b.reg_id, b.id, b.ruid) for b in both}
    refreshed = await save(storage, flow(2, lifetime=1200, cseq=2))
    assert flows(refreshed) == [(SHARED, 1, NOW + 900), (SHARED, 2, NOW + 1200)]
    assert {b.reg_id: b.id for b in refreshed} == {k: b.id for k, b in first.items()}
    assert flows(await storage.location.lookup(ALICE, now=NOW)) == flows(refreshed)


async def test_a_flow_moved_to_a_new_contact_replaces_only_itself(storage: Storage) -> None:
    await save(storage, flow(1))
    await save(storage, flow(2))
    moved = await save(storage, flow(2, "sip:a@10.9.9.9:6000", cseq=2))
    assert flows(moved) == [
        ("sip:a@10.0.0.1:5060", 1, NOW + 3600),
        ("sip:a@10.9.9.9:6000", 2, NOW + 3600),
    ]


async def test_unregistering_one_flow_keeps_the_other(storage: Storage) -> None:
    await save(storage, flow(1))
    await save(storage, flow(2))
    assert flows(await save(storage, flow(1, lifetime=0, cseq=2))) == [(SHARED, 2, NOW + 3600)]


async def test_plain_bindings_and_flows_of_one_contact_are_separate(storage: Storage) -> None:
    """A REGISTER without reg-id addresses the plain binding of its Contact only (RFC 3261
    §10.3); the flows sharing that Contact are not compared by Contact (RFC 5626 §6)."""
    await save(storage, flow(1))
    plain = await save(storage, update(SHARED, 300, callid="plain"))
    assert flows(plain) == [(SHARED, None, NOW + 300), (SHARED, 1, NOW + 3600)]
    refreshed = await save(storage, update(SHARED, 600, callid="plain", cseq=2))
    assert flows(refreshed) == [(SHARED, None, NOW + 600), (SHARED, 1, NOW + 3600)]
    removed = await save(storage, update(SHARED, 0, callid="plain", cseq=3))
    assert flows(removed) == [(SHARED, 1, NOW + 3600)]


async def test_flows_count_against_max_contacts(storage: Storage) -> None:
    await save(storage, flow(1), max_contacts=2)
    await save(storage, flow(2), max_contacts=2)
    with pytest.raises(TooManyContacts):
        await save(storage, flow(3), max_contacts=2)
    assert [b.reg_id for b in await save(storage, flow(2, cseq=2), max_contacts=2)] == [1, 2]


async def test_instance_without_reg_id_is_keyed_by_contact(storage: Storage) -> None:
    instance = "urn:uuid:1"
    await save(storage, update("sip:a@1", instance=instance))
    result = await save(storage, update("sip:a@2", instance=instance, callid="x"))
    assert contacts(result) == ["sip:a@1", "sip:a@2"]


async def test_max_contacts_refusal_writes_nothing(storage: Storage) -> None:
    await save(storage, update("sip:a@1"), update("sip:a@2"), max_contacts=3)
    too_many = [
        update("sip:a@1", 0, cseq=2),
        update("sip:a@3"),
        update("sip:a@4"),
        update("sip:a@5"),
    ]
    with pytest.raises(TooManyContacts) as refused:
        await save(storage, *too_many, max_contacts=3)
    assert (refused.value.count, refused.value.limit) == (4, 3)
    # Neither the removal nor any addition of the refused request was applied.
    assert contacts(await storage.location.lookup(ALICE, now=NOW)) == ["sip:a@1", "sip:a@2"]
    assert await storage.location.count(ALICE, now=NOW) == 2


async def test_max_contacts_allows_refresh_and_swap_at_the_limit(storage: Storage) -> None:
    await save(storage, update("sip:a@1"), update("sip:a@2"), max_contacts=2)
    refreshed = await save(storage, update("sip:a@1", cseq=2), max_contacts=2)
    assert contacts(refreshed) == ["sip:a@1", "sip:a@2"]
    swapped = await save(
        storage, update("sip:a@2", 0, cseq=3), update("sip:a@3", cseq=3), max_contacts=2
    )
    assert contacts(swapped) == ["sip:a@1", "sip:a@3"]
    # Over a limit lowered since: refreshing or shrinking is fine, growing is not.
    assert len(await save(storage, update("sip:a@1", cseq=4), max_contacts=1)) == 2
    with pytest.raises(TooManyContacts):
        await save(storage, update("sip:a@9", cseq=5), max_contacts=1)


async def test_expired_bindings_are_never_returned(storage: Storage) -> None:
    await save(storage, update("sip:a@short", 60, flow="f1"), update("sip:a@long", 600))
    later = NOW + 61
    assert contacts(await storage.location.lookup(ALICE, now=later)) == ["sip:a@long"]
    assert await storage.location.count(ALICE, now=later) == 1
    assert [b.contact for b in await storage.location.all_bindings(now=later)] == ["sip:a@long"]
    assert await storage.location.live_flows(now=later) == []
    result = await save(storage, update("sip:a@other"), now=later)
    assert contacts(result) == ["sip:a@long", "sip:a@other"]


async def test_expired_binding_does_not_block_its_contact(storage: Storage) -> None:
    """An expired row with the same Call-ID and a higher CSeq is gone, not 'newer'."""
    await save(storage, update("sip:a@1", 60, cseq=9))
    [fresh] = await save(storage, update("sip:a@1", 600, cseq=1), now=NOW + 100)
    assert (fresh.cseq, fresh.expires) == (1, NOW + 600)


async def test_purge_deletes_expired_rows_only(storage: Storage) -> None:
    await save(storage, update("sip:a@1", 60), update("sip:a@2", 600))
    await save(storage, update("sip:b@1", 30), aor=BOB)
    assert await storage.location.purge_expired(now=NOW + 100) == 2
    assert await storage.location.purge_expired(now=NOW + 100) == 0
    assert [b.contact for b in await storage.location.all_bindings(now=NOW)] == ["sip:a@2"]


async def test_concurrent_purges_from_two_registrars(
    storage: Storage, databases: Databases, opened: OpenStorage
) -> None:
    other = opened(storage.dsns)
    for i in range(40):
        aor = Aor(f"user{i}", "example.com")
        await save(storage, update(f"sip:u{i}@1", 10), update(f"sip:u{i}@2", 1000), aor=aor)
    results = await asyncio.gather(
        *(s.location.purge_expired(now=NOW + 20) for s in (storage, other, storage, other))
    )
    assert sum(results) == 40
    assert len(await storage.location.all_bindings(now=NOW)) == 40


async def test_remove_and_remove_all(storage: Storage) -> None:
    await save(storage, update("sip:a@1"), update("sip:a@2"), update("sip:a@3", callid="z"))
    assert await storage.location.remove(ALICE, "sip:a@1") == 1
    assert await storage.location.remove(ALICE, "sip:a@1") == 0
    # Contact: * with the Call-ID of a@2 and a CSeq not above it: a@2 stays.
    assert await storage.location.remove_all(ALICE, callid="call-1", cseq=1) == 1
    assert contacts(await storage.location.lookup(ALICE, now=NOW)) == ["sip:a@2"]
    assert await storage.location.remove_all(ALICE, callid="call-1", cseq=2) == 1
    await save(storage, update("sip:a@4"))
    assert await storage.location.remove_all(ALICE) == 1
    assert await storage.location.lookup(ALICE, now=NOW) == []


async def test_lookup_orders_by_q(storage: Storage) -> None:
    await save(storage, update("sip:low", q=0.1), update("sip:none"), update("sip:mid", q=0.5))
    assert [b.contact for b in await storage.location.lookup(ALICE, now=NOW)] == [
        "sip:none",
        "sip:mid",
        "sip:low",
    ]


def routed(binding: Binding) -> RouteBinding:
    """What lookup_routes answers for a binding: its routing fields."""
    return RouteBinding(
        binding.id,
        binding.contact,
        binding.received,
        binding.path,
        binding.q,
        binding.last_modified,
        binding.instance,
        binding.reg_id,
    )


async def test_lookup_for_routing_is_the_lookup_with_the_routing_fields(storage: Storage) -> None:
    instance = "<urn:uuid:00000000-0000-0000-0000-000000000001>"
    await save(
        storage,
        update("sip:low", q=0.1, received="sip:198.51.100.7:40123"),
        update("sip:none", path="<sip:lb1;lr>, <sip:lb2;lr>"),
        update("sip:flow1", q=0.5, instance=instance, reg_id=1, flow="ft-1"),
        update("sip:flow2", q=0.5, instance=instance, reg_id=2),
        update("sip:gone", lifetime=10),
    )
    full = await storage.location.lookup(ALICE, now=NOW + 20)
    routes = await storage.location.lookup_routes(ALICE, now=NOW + 20)
    assert routes == [routed(b) for b in full]  # the same rows in the same order
    assert [(b.contact, b.q) for b in routes[::3]] == [("sip:none", None), ("sip:low", 0.1)]
    flow = next(b for b in routes if b.contact == "sip:flow1")
    assert (flow.q, flow.instance, flow.reg_id, flow.last_modified) == (0.5, instance, 1, NOW)
    assert (routes[0].path, routes[3].received) == (
        "<sip:lb1;lr>, <sip:lb2;lr>",
        "sip:198.51.100.7:40123",
    )
    assert await storage.location.lookup_routes(BOB, now=NOW) == []


async def test_live_flows_for_the_lb(storage: Storage) -> None:
    await save(
        storage,
        update("sip:a@1", 100, flow="f1", received="sip:1.1.1.1:5060"),
        update("sip:a@2", 900, flow="f1", received="sip:1.1.1.1:5060"),
        update("sip:a@3", 500),
    )
    await save(storage, update("sip:b@1", 300, flow="f2", socket="tcp:x"), aor=BOB)
    flows = await storage.location.live_flows(now=NOW)
    assert [(f.flow, f.expires) for f in flows] == [("f1", NOW + 900), ("f2", NOW + 300)]
    assert (flows[0].received, flows[1].socket) == ("sip:1.1.1.1:5060", "tcp:x")


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (update("sip:" + "x" * 600), "contact"),
        (update(""), "contact"),
        (update("sip:a@1", callid=""), "callid"),
        (update("sip:a@1", cseq=-1), "cseq"),
        (update("sip:a@1", q=1.5), "q"),
        (update("sip:a@1", reg_id=1), "reg_id"),
        (update("sip:a@1", path="p" * 3000), "path"),
        (update("sip:a@1", user_agent="u" * 300), "user_agent"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    storage: Storage, bad: BindingUpdate, field: str
) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}:"):
        await save(storage, update("sip:good"), bad)
    assert await storage.location.lookup(ALICE, now=NOW) == []


async def test_bad_aor_and_duplicate_contacts(storage: Storage) -> None:
    with pytest.raises(InvalidInput, match=r"^username:"):
        await save(storage, update("sip:a@1"), aor=Aor("", "example.com"))
    with pytest.raises(InvalidInput, match=r"^domain:"):
        await storage.location.lookup(Aor("alice", "d" * 200))
    with pytest.raises(InvalidInput, match=r"^contact:.*twice"):
        await save(storage, update("sip:a@1"), update("sip:a@1"))


async def test_concurrent_saves(storage: Storage) -> None:
    """Many AORs at once, and several new contacts of one AOR at once: nothing is lost."""
    await asyncio.gather(
        *(save(storage, update(f"sip:u{i}@h"), aor=Aor(f"u{i}", "example.com")) for i in range(30))
    )
    assert len(await storage.location.all_bindings(now=NOW)) == 30
    await asyncio.gather(
        *(save(storage, update(f"sip:a@{i}", callid=f"c{i}"), max_contacts=50) for i in range(8))
    )
    assert len(await storage.location.lookup(ALICE, now=NOW)) == 8


async def test_reads_go_to_the_replica_and_retry_on_the_primary(
    databases: Databases, opened: OpenStorage
) -> None:
    """Without a replication set-up, the 'replica' is a second database we fill by hand."""
    primary, replica = Dsn.parse(databases.migrated()), Dsn.parse(databases.migrated())
    writer = opened(Dsns(primary, (primary,)))
    on_replica = opened(Dsns(replica, (replica,)))
    await save(writer, update("sip:a@primary"))
    await save(on_replica, update("sip:b@replica"), aor=BOB)

    strict = opened(Dsns(primary, (replica,)), retry_primary_on_miss=False)
    assert await strict.location.lookup(ALICE, now=NOW) == []  # replica lags
    assert contacts(await strict.location.lookup(BOB, now=NOW)) == ["sip:b@replica"]

    retrying = opened(Dsns(primary, (replica,)), retry_primary_on_miss=True)
    assert contacts(await retrying.location.lookup(ALICE, now=NOW)) == ["sip:a@primary"]
    [primary_route] = await retrying.location.lookup_routes(ALICE, now=NOW)
    assert primary_route.contact == "sip:a@primary"
    assert await strict.location.lookup_routes(ALICE, now=NOW) == []
    # Writes always go to the primary.
    await save(retrying, update("sip:b@new"), aor=BOB)
    assert contacts(await writer.location.lookup(BOB, now=NOW)) == ["sip:b@new"]


async def test_work_in_flight_is_capped(databases: Databases, opened: OpenStorage) -> None:
    storage = opened(databases.clean(), max_in_flight=2)
    outcomes = await asyncio.gather(
        *(storage.location.lookup(ALICE, now=NOW) for _ in range(10)), return_exceptions=True
    )
    shed = [o for o in outcomes if isinstance(o, StorageOverloaded)]
    assert len(shed) == 8
    assert outcomes.count([]) == 2
    assert storage.in_flight == 0
    assert await storage.location.lookup(ALICE, now=NOW) == []
