"""Pool targets: parsing, choice by Call-ID, health from probes (sans-IO, a fake clock)."""

from __future__ import annotations

import pytest

from sipfleet.core.lb.pools import BadTarget, Member, Pools, members_of, target_destination
from sipfleet.dns.rfc3263 import Located
from sipfleet.storage.model import LbTarget
from sipfleet.transport.base import Destination


def rows(*uris: str, weight: int = 1) -> list[LbTarget]:
    return [LbTarget(n, "proxy", uri, weight, "active") for n, uri in enumerate(uris, start=1)]


def up(pools: Pools) -> Pools:
    for target in pools.targets.values():
        target.health = "up"
    pools.update([LbTarget(t.id, t.pool, t.uri, t.weight, t.state) for t in pools.targets.values()])
    return pools


def test_target_uris() -> None:
    assert target_destination("sip:10.0.0.7:5080") == Destination("udp", "10.0.0.7", 5080)
    assert target_destination("sip:[2001:db8::1];transport=tcp") == Destination(
        "tcp", "2001:db8::1", 5060
    )
    assert target_destination("sip:proxies.example.net") is None  # the shell looks it up
    for bad in ("sip:10.0.0.256", "sips:10.0.0.7", "tel:123", "sip:10.0.0.7;transport=sctp"):
        with pytest.raises(BadTarget):
            target_destination(bad)


def test_unusable_rows_are_set_aside_with_the_reason() -> None:
    pools = Pools(1.0)
    named = "sip:name.example:5080"
    added, _ = pools.update(rows("sip:10.0.0.1:5080", named, "sip:10.0.0.256"))
    assert [t.uri for t in added] == ["sip:10.0.0.1:5080"]
    assert pools.rejected[named] == "not looked up yet"
    assert "neither an IP address nor a host name" in pools.rejected["sip:10.0.0.256"]
    pools.update(rows("sip:10.0.0.1:5080", named), {named: "name.example does not exist in DNS"})
    assert pools.rejected[named] == "name.example does not exist in DNS"


PROXIES = "sip:proxies.example.net"


def members(*addresses: tuple[str, int, int]) -> dict[str, list[Member]]:
    """(host, weight, tier) -> the members of PROXIES on port 5060."""
    return {PROXIES: [Member(Destination("udp", h, 5060), w, t) for h, w, t in addresses]}


def test_a_name_is_a_target_per_address_with_its_weight() -> None:
    pools = Pools(1.0)
    added, _ = pools.update(rows(PROXIES), members(("10.0.0.1", 3, 0), ("10.0.0.2", 1, 0)))
    assert sorted((t.uri, t.weight, t.source) for t in added) == [
        ("sip:10.0.0.1:5060;transport=udp", 3, PROXIES),
        ("sip:10.0.0.2:5060;transport=udp", 1, PROXIES),
    ]
    assert pools.at("10.0.0.2", 5060) is not None  # its requests come from the cluster
    chosen = [pools.choose("proxy", f"call-{n}") for n in range(800)]
    share = sum(t is not None and t.destination.host == "10.0.0.1" for t in chosen) / 800
    assert 0.68 < share < 0.82


def test_a_higher_srv_priority_is_a_backup_tier() -> None:
    pools = Pools(1.0)
    pools.update(rows(PROXIES), members(("10.0.0.1", 1, 0), ("10.0.0.9", 1, 1)))
    for target in pools.targets.values():
        target.health = "up"
    pools.update(rows(PROXIES), members(("10.0.0.1", 1, 0), ("10.0.0.9", 1, 1)))
    hosts = {pools.choose("proxy", f"call-{n}").destination.host for n in range(50)}  # type: ignore[union-attr]
    assert hosts == {"10.0.0.1"}
    pools.targets[("proxy", "sip:10.0.0.1:5060;transport=udp")].health = "down"
    pools.update(rows(PROXIES), members(("10.0.0.1", 1, 0), ("10.0.0.9", 1, 1)))
    assert pools.choose("proxy", "call-1").destination.host == "10.0.0.9"  # type: ignore[union-attr]


def test_a_member_that_stays_keeps_its_health_when_the_name_changes() -> None:
    pools = Pools(1.0)
    pools.update(rows(PROXIES), members(("10.0.0.1", 1, 0)))
    pools.targets[("proxy", "sip:10.0.0.1:5060;transport=udp")].health = "up"
    added, removed = pools.update(rows(PROXIES), members(("10.0.0.1", 1, 0), ("10.0.0.2", 1, 0)))
    assert [t.uri for t in added] == ["sip:10.0.0.2:5060;transport=udp"]
    assert removed == []
    assert pools.targets[("proxy", "sip:10.0.0.1:5060;transport=udp")].health == "up"
    _, removed = pools.update(rows(PROXIES), members(("10.0.0.2", 1, 0)))
    assert [t.uri for t in removed] == ["sip:10.0.0.1:5060;transport=udp"]


def test_removing_a_target_moves_only_its_call_ids() -> None:
    uris = [f"sip:10.0.0.{n}:5080" for n in range(1, 5)]
    pools = up(Pools(1.0))
    pools.update(rows(*uris))
    up(pools)
    before = {f"call-{n}": pools.choose("proxy", f"call-{n}") for n in range(400)}
    assert {t.uri for t in before.values() if t} == set(uris)
    pools.update(rows(*uris[:3]))  # the fourth leaves
    for key, target in before.items():
        now = pools.choose("proxy", key)
        assert now is not None
        assert target is not None
        if target.uri != uris[3]:
            assert now.uri == target.uri  # nobody else moved


def test_weights_share_the_call_ids() -> None:
    pools = Pools(1.0)
    heavy_row = LbTarget(9, "proxy", "sip:10.0.0.2:5080", 3, "active")
    pools.update([*rows("sip:10.0.0.1:5080"), heavy_row])
    up(pools)
    chosen = [pools.choose("proxy", f"k{n}") for n in range(2000)]
    heavy = sum(1 for target in chosen if target is not None and target.uri == heavy_row.uri)
    assert 1350 < heavy < 1650  # 3/4 of them


def test_two_unanswered_probes_take_a_target_out_and_one_answer_brings_it_back() -> None:
    pools = Pools(probe_interval=5.0)  # probe timeout: 1 s
    pools.update(rows("sip:10.0.0.1:5080", "sip:10.0.0.2:5080"))
    first, second = pools.targets.values()
    assert [t.uri for t in pools.probes_due(0.0)] == [first.uri, second.uri]
    assert pools.answered(first.id, first.probe_seq) is not None  # unknown -> up
    pools.answered(second.id, second.probe_seq)
    assert pools.choose("proxy", "x") is not None
    # At 5 s the next probes go; the second target has died and does not answer.
    assert len(pools.probes_due(5.0)) == 2
    pools.answered(first.id, first.probe_seq)
    assert pools.judge(6.0) == []  # one miss: asked again at once
    assert pools.probes_due(6.0) == [second]
    changes = pools.judge(7.0)
    assert [(c.target.uri, c.health) for c in changes] == [(second.uri, "down")]
    # Down 2 s after the probe it missed: within one interval plus two timeouts.
    assert all(pools.choose("proxy", f"k{n}") is first for n in range(50))
    assert pools.probes_due(7.5) == []  # the next regular probe is due at 11 s
    assert pools.probes_due(11.0) == [first, second]
    change = pools.answered(second.id, second.probe_seq)
    assert change is not None
    assert change.health == "up"


def test_a_late_answer_to_an_old_probe_does_not_count() -> None:
    pools = Pools(probe_interval=1.0)
    pools.update(rows("sip:10.0.0.1:5080"))
    (target,) = pools.probes_due(0.0)
    old = target.probe_seq
    pools.judge(0.5)
    pools.probes_due(0.5)
    assert pools.answered(target.id, old) is None
    assert target.health == "unknown"


def test_unknown_targets_serve_only_while_none_is_known_up() -> None:
    pools = Pools(1.0)
    pools.update(rows("sip:10.0.0.1:5080", "sip:10.0.0.2:5080"))
    assert {pools.choose("proxy", f"k{n}").uri for n in range(40)} == {  # type: ignore[union-attr]
        "sip:10.0.0.1:5080",
        "sip:10.0.0.2:5080",
    }
    (first, _) = pools.probes_due(0.0)
    pools.answered(first.id, first.probe_seq)
    assert {pools.choose("proxy", f"k{n}").uri for n in range(40)} == {first.uri}  # type: ignore[union-attr]


def test_disabled_targets_get_nothing_not_even_probes() -> None:
    pools = Pools(1.0)
    pools.update([LbTarget(1, "proxy", "sip:10.0.0.1:5080", 1, "disabled")])
    assert pools.choose("proxy", "k") is None
    assert pools.probes_due(0.0) == []


def test_srv_records_become_members_in_a_stable_order() -> None:
    a, b, c = (Destination("udp", f"10.0.0.{n}", 5060) for n in (1, 2, 3))
    drawn = [Located(b, 10, 0), Located(a, 10, 3), Located(c, 20, 5)]
    members = members_of(drawn)
    assert members == [Member(a, 3, 0), Member(b, 1, 0), Member(c, 5, 1)]  # weight 0 -> 1
    assert members_of(list(reversed(drawn))) == members  # whatever the weighted draw gave
