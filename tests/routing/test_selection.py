"""Weighted rendezvous hashing (sipfleet.routing.selection)."""

from __future__ import annotations

from collections import Counter

from sipfleet.routing.selection import Target, choose, ranked

PROXIES = [Target(f"sip:10.0.0.{i}:5080") for i in range(1, 5)]
KEYS = [f"call-{i}@host" for i in range(4000)]


def test_same_key_same_target() -> None:
    assert all(choose(PROXIES, key) == choose(list(reversed(PROXIES)), key) for key in KEYS[:200])


def test_removing_a_target_moves_only_its_keys() -> None:
    before = {key: choose(PROXIES, key) for key in KEYS}
    survivors = PROXIES[1:]
    after = {key: choose(survivors, key) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved  # the removed target had keys
    assert all(before[key] == PROXIES[0] for key in moved)


def test_adding_a_target_takes_only_its_share() -> None:
    before = {key: choose(PROXIES, key) for key in KEYS}
    grown = [*PROXIES, Target("sip:10.0.0.9:5080")]
    after = {key: choose(grown, key) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == grown[-1] for key in moved)
    assert 0.12 < len(moved) / len(KEYS) < 0.28  # about 1/5


def test_share_follows_weight() -> None:
    weighted = [Target("a", 1), Target("b", 3)]
    counts = Counter(choose(weighted, key).uri for key in KEYS)  # type: ignore[union-attr]
    assert 0.70 < counts["b"] / len(KEYS) < 0.80


def test_zero_weight_and_empty_pool() -> None:
    assert choose([Target("a", 0)], "k") is None
    assert choose([], "k") is None


def test_ranked_is_failover_order() -> None:
    order = ranked(PROXIES, "some-call")
    assert order[0] == choose(PROXIES, "some-call")
    assert sorted(t.uri for t in order) == sorted(t.uri for t in PROXIES)
