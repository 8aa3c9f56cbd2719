"""Contract: subscribers, user preferences and LB targets, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from sipfleet.sip.digest import compute_ha1
from sipfleet.storage import AlreadyExists, InvalidInput, Storage, Subscriber


def subscriber(user: str, domain: str, password: str) -> Subscriber:
    return Subscriber(
        user,
        domain,
        compute_ha1(user, domain, password),
        compute_ha1(user, domain, password, "SHA-256"),
    )


async def test_subscriber_lifecycle(storage: Storage) -> None:
    subs = storage.subscribers
    alice = subscriber("alice", "example.com", "secret")
    assert await subs.get("alice", "example.com") is None
    await subs.add(alice)
    assert await subs.get("alice", "example.com") == alice
    assert await subs.get("Alice", "example.com") is None  # user parts are case-sensitive
    with pytest.raises(AlreadyExists):
        await subs.add(subscriber("alice", "example.com", "other"))
    changed = subscriber("alice", "example.com", "new")
    assert await subs.set_ha1("alice", "example.com", changed.ha1, changed.ha1_sha256)
    assert await subs.get("alice", "example.com") == changed
    assert not await subs.set_ha1("nobody", "example.com", changed.ha1, changed.ha1_sha256)
    assert await subs.remove("alice", "example.com")
    assert not await subs.remove("alice", "example.com")
    assert await subs.get("alice", "example.com") is None


async def test_subscriber_list_by_domain(storage: Storage) -> None:
    for user, domain in (("bob", "b.org"), ("alice", "a.org"), ("carol", "a.org")):
        await storage.subscribers.add(subscriber(user, domain, "pw"))
    listed = [str(s.aor) for s in await storage.subscribers.list_all()]
    assert listed == ["alice@a.org", "carol@a.org", "bob@b.org"]
    assert [s.username for s in await storage.subscribers.list_all("a.org")] == ["alice", "carol"]


async def test_subscriber_rejects_what_is_not_an_ha1(storage: Storage) -> None:
    good = subscriber("alice", "example.com", "pw")
    with pytest.raises(InvalidInput, match=r"^ha1:"):
        await storage.subscribers.add(
            Subscriber("alice", "example.com", "plaintext", good.ha1_sha256)
        )
    with pytest.raises(InvalidInput, match=r"^ha1_sha256:"):
        await storage.subscribers.add(Subscriber("alice", "example.com", good.ha1, good.ha1))
    with pytest.raises(InvalidInput, match=r"^username:"):
        await storage.subscribers.add(
            Subscriber("x" * 65, "example.com", good.ha1, good.ha1_sha256)
        )
    assert await storage.subscribers.list_all() == []


async def test_preferences(storage: Storage) -> None:
    prefs = storage.preferences
    assert await prefs.get("alice", "example.com") == {}
    await prefs.set("alice", "example.com", "lcr_cap", "3")
    await prefs.set("alice", "example.com", "clir", "1")
    await prefs.set("bob", "example.com", "clir", "0")
    await prefs.set("alice", "example.com", "lcr_cap", "7")  # overwrites
    assert await prefs.get("alice", "example.com") == {"clir": "1", "lcr_cap": "7"}
    assert await prefs.remove("alice", "example.com", "clir")
    assert not await prefs.remove("alice", "example.com", "clir")
    assert await prefs.get("alice", "example.com") == {"lcr_cap": "7"}
    assert await prefs.get("bob", "example.com") == {"clir": "0"}


async def test_lb_targets(storage: Storage) -> None:
    targets = storage.lb_targets
    r1 = await targets.add("registrar", "sip:10.0.0.1:5070")
    p1 = await targets.add("proxy", "sip:10.0.0.2:5080", weight=5, state="draining")
    r2 = await targets.add("registrar", "sip:10.0.0.3:5070")
    assert (r1.pool, r1.uri, r1.weight, r1.state) == ("registrar", "sip:10.0.0.1:5070", 1, "active")
    assert (p1.weight, p1.state) == (5, "draining")
    with pytest.raises(AlreadyExists):
        await targets.add("registrar", "sip:10.0.0.1:5070")
    assert await targets.list_all("registrar") == [r1, r2]
    assert await targets.list_all() == [p1, r1, r2]
    assert await targets.set_state("registrar", "sip:10.0.0.1:5070", "disabled")
    assert await targets.set_state("registrar", "sip:10.0.0.1:5070", "disabled")  # no change
    assert not await targets.set_state("proxy", "sip:10.0.0.1:5070", "active")
    assert [t.state for t in await targets.list_all("registrar")] == ["disabled", "active"]
    assert await targets.remove("registrar", "sip:10.0.0.3:5070")
    assert not await targets.remove("registrar", "sip:10.0.0.3:5070")
    assert [t.uri for t in await targets.list_all()] == ["sip:10.0.0.2:5080", "sip:10.0.0.1:5070"]


async def test_lb_target_bad_values_name_the_field(storage: Storage) -> None:
    with pytest.raises(InvalidInput, match=r"^pool:"):
        await storage.lb_targets.add("media", "sip:x")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"^state:"):
        await storage.lb_targets.add("proxy", "sip:x", state="up")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"^weight:"):
        await storage.lb_targets.add("proxy", "sip:x", weight=-1)
    with pytest.raises(InvalidInput, match=r"^uri:"):
        await storage.lb_targets.add("proxy", "")
    assert await storage.lb_targets.list_all() == []


async def test_concurrent_subscriber_reads_share_round_trips_and_each_gets_its_own(
    storage: Storage,
) -> None:
    users = [f"u{i:03d}" for i in range(150)]
    for user in users[::2]:  # every other one exists
        await storage.subscribers.add(subscriber(user, "example.com", f"pw-{user}"))
    asked = [*users, users[0], users[1], "U000"]  # repeats, and a case variant
    found = await asyncio.gather(*(storage.subscribers.get(u, "example.com") for u in asked))
    expected = [subscriber(u, "example.com", f"pw-{u}") if u in users[::2] else None for u in asked]
    assert found == expected
    reads = storage.subscribers.reads
    assert reads is not None
    assert reads.reads >= len(asked)
    assert reads.batches <= 8  # 153 reads in a few round trips, not 153
