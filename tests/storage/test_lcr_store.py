"""Contract: the LCR tables (storage.lcr), on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from sipfleet.routing.lcr import FAX, PHONE, LcrTable, load_gws
from sipfleet.routing.lcr_file import load_lcr_file
from sipfleet.storage import AlreadyExists, InvalidLcr, Storage
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget
from tests.storage.conftest import Databases, OpenStorage

EXAMPLE = Path(__file__).parents[2] / "examples" / "lcr-capabilities.toml"


def reference() -> LcrRows:
    return load_lcr_file(EXAMPLE).rows


def small(host: str = "gw-a.example.net") -> LcrRows:
    """One gateway, one rule: a second, different state."""
    return LcrRows(
        gateways=(Gateway("gw-a", host, 5080, "tcp", strip=1, trusted=True),),
        capabilities=(GatewayCapability("gw-a", PHONE | FAX, "+49"),),
        rules=(Rule(7, "0049", from_uri="sip:*@pbx.example.com", stopper=True),),
        targets=(RuleTarget(7, "gw-a", PHONE, priority=2, weight=0),),
    )


async def test_empty_database(storage: Storage) -> None:
    assert await storage.lcr.version() == 0
    snapshot = await storage.lcr.load()
    assert (snapshot.rows, snapshot.version) == (LcrRows(), 0)
    assert await storage.lcr.list_gateways() == []


async def test_load_gives_back_what_was_imported(storage: Storage) -> None:
    rows = reference()
    assert await storage.lcr.replace_all(rows) == 1
    snapshot = await storage.lcr.load()
    assert snapshot.version == 1
    assert snapshot.rows == rows  # every field, in the file's order
    # ... and it routes as DESIGN §3 says.
    trunks = load_gws(LcrTable.build(snapshot.rows), "4312345", PHONE)
    assert str(trunks[0].uri) == "sip:014312345@sipgw6"
    assert str(trunks[-1].uri) == "sip:014312345@sipgw2"

    # Replacing means replacing: nothing of the reference example is left.
    assert await storage.lcr.replace_all(small()) == 2
    assert (await storage.lcr.load()).rows == small()


async def test_a_rejected_import_changes_nothing(storage: Storage) -> None:
    await storage.lcr.replace_all(reference())
    bad = replace(
        small(),
        targets=(
            RuleTarget(7, "gw-zz", PHONE),
            RuleTarget(7, "gw-a", PHONE, priority=1, weight=-1),
        ),
        capabilities=(GatewayCapability("gw-a", 0, "4x"),),
    )
    with pytest.raises(InvalidLcr) as caught:
        await storage.lcr.replace_all(bad)
    assert (
        'rule 7 (prefix "0049"): target gw "gw-zz" is not a known gateway' in caught.value.problems
    )
    assert any(
        p.startswith('gateway "gw-a": capability 0: cap: 0 names') for p in caught.value.problems
    )
    assert any("weight: -1 is negative" in p for p in caught.value.problems)
    snapshot = await storage.lcr.load()
    assert (snapshot.rows, snapshot.version) == (reference(), 1)


async def test_a_write_failing_midway_is_rolled_back(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Atomicity itself: with the checks switched off, the database refuses the second
    gateway of the same name after the old rows were deleted; the old rows must survive."""
    await storage.lcr.replace_all(reference())
    monkeypatch.setattr("sipfleet.storage.lcr.check_rows", lambda rows: [])
    rows = small()
    twice = replace(rows, gateways=rows.gateways * 2)
    with pytest.raises(AlreadyExists):
        await storage.lcr.replace_all(twice)
    snapshot = await storage.lcr.load()
    assert (snapshot.rows, snapshot.version) == (reference(), 1)


async def test_column_sizes_are_named(storage: Storage) -> None:
    long_name = "g" * 65
    rows = LcrRows(
        gateways=(Gateway(long_name, "h.example"),),
        capabilities=(GatewayCapability(long_name, PHONE, "1" * 65),),
        rules=(Rule(0, ""),),
    )
    with pytest.raises(InvalidLcr) as caught:
        await storage.lcr.replace_all(rows)
    assert caught.value.problems == (
        f'gateway "{long_name}": name: longer than 64 characters',
        f'gateway "{long_name}": capability 1: prefix: longer than 64 characters',
        'rule 0 (prefix ""): id: 0 is not between 1 and 2147483647',
    )


async def test_every_write_moves_the_version(storage: Storage) -> None:
    lcr = storage.lcr
    versions = [await lcr.replace_all(reference())]
    gw7 = Gateway("gw7", "10.0.0.7", 5060, "udp")
    with pytest.raises(InvalidLcr, match='gateway "gw7": caps: missing'):
        await lcr.add_gateway(gw7, [])
    versions.append(await lcr.add_gateway(gw7, [GatewayCapability("gw7", PHONE)]))
    versions.append(await lcr.set_gateway_enabled("gw7", False))
    added = await lcr.add_rule(Rule(0, "43"), [RuleTarget(0, "sipgw1", PHONE)], assign_id=True)
    assert added == Rule(2, "43")
    versions.append(await lcr.version())
    versions.append(await lcr.add_target(RuleTarget(2, "sipgw6", FAX, 1, 3)))
    assert await lcr.remove_target(2, "sipgw6") == 1
    versions.append(await lcr.version())
    versions.append(await lcr.bump_version())
    assert await lcr.remove_rule(2) is not None
    versions.append(await lcr.version())
    versions.append(await lcr.remove_gateway("gw7"))
    versions.append(await lcr.merge(small()))
    assert versions == list(range(1, 11))
    # What changes nothing does not move it.
    assert await lcr.remove_gateway("nope") is None
    assert await lcr.set_gateway_enabled("nope", True) is None
    assert await lcr.remove_rule(99) is None
    assert await lcr.remove_target(1, "nope") == 0
    assert await lcr.version() == 10
    rows = (await lcr.load()).rows
    assert rows == LcrRows(
        reference().gateways + small().gateways,
        reference().capabilities + small().capabilities,
        reference().rules + small().rules,
        reference().targets + small().targets,
    )


async def test_gateways_and_rules_one_by_one(storage: Storage) -> None:
    lcr = storage.lcr
    caps = [GatewayCapability("gw-b", PHONE, "0"), GatewayCapability("gw-b", FAX, "9")]
    await lcr.add_gateway(Gateway("gw-b", "[2001:db8::1]", 5070, "tcp", strip=2), caps)
    await lcr.add_gateway(
        Gateway("gw-a", "a.example", enabled=False), [GatewayCapability("gw-a", PHONE)]
    )
    with pytest.raises(AlreadyExists, match='gateway "gw-a": exists already'):
        await lcr.add_gateway(Gateway("gw-a", "other.example"), [GatewayCapability("gw-a", 1)])
    entries = await lcr.list_gateways()
    assert [(e.gateway.name, e.gateway.enabled) for e in entries] == [
        ("gw-a", False),
        ("gw-b", True),
    ]
    assert entries[1].capabilities == tuple(caps)

    rule = await lcr.add_rule(
        Rule(5, "49", request_uri="sip:49*"),
        [RuleTarget(5, "gw-b", PHONE, 1, 2), RuleTarget(5, "gw-b", FAX, 2, 1)],
    )
    assert rule.id == 5
    with pytest.raises(AlreadyExists, match="rule 5: exists already"):
        await lcr.add_rule(Rule(5, "48"), [])
    with pytest.raises(InvalidLcr, match='rule 6 \\(prefix "4a"\\): prefix'):
        await lcr.add_rule(Rule(6, "4a"), [])
    with pytest.raises(InvalidLcr, match="bits 4 are not carried"):
        await lcr.add_target(RuleTarget(5, "gw-a", 4))
    with pytest.raises(InvalidLcr, match="rule 9: does not exist"):
        await lcr.add_target(RuleTarget(9, "gw-a", PHONE))
    [listed] = await lcr.list_rules()
    assert listed.rule == Rule(5, "49", request_uri="sip:49*")
    assert [(t.gw, t.capability, t.priority, t.weight) for t in listed.targets] == [
        ("gw-b", PHONE, 1, 2),
        ("gw-b", FAX, 2, 1),
    ]

    # A gateway that rules use is not removed behind their back.
    with pytest.raises(InvalidLcr, match='gateway "gw-b": still a target of rule 5'):
        await lcr.remove_gateway("gw-b")
    assert await lcr.remove_gateway("gw-b", with_targets=True) is not None
    [listed] = await lcr.list_rules()
    assert listed.targets == ()
    rows = (await lcr.load()).rows
    assert [g.name for g in rows.gateways] == ["gw-a"]
    assert rows.capabilities == (GatewayCapability("gw-a", PHONE),)


async def test_merge_replaces_by_name_and_id(storage: Storage) -> None:
    await storage.lcr.replace_all(reference())
    update = LcrRows(
        gateways=(Gateway("sipgw1", "10.1.1.1"), Gateway("new", "10.9.9.9")),
        capabilities=(GatewayCapability("sipgw1", PHONE), GatewayCapability("new", PHONE)),
        rules=(Rule(2, "1"),),
        targets=(RuleTarget(2, "new", PHONE),),
    )
    await storage.lcr.merge(update)
    rows = (await storage.lcr.load()).rows
    assert {g.name: g.host for g in rows.gateways}["sipgw1"] == "10.1.1.1"
    assert len(rows.gateways) == 7
    assert [r.id for r in rows.rules] == [1, 2]
    assert len(rows.targets) == len(reference().targets) + 1
    # A merge that would leave a rule pointing at a carrier that lost its capability fails.
    with pytest.raises(InvalidLcr, match='target gw "sipgw2": cap: bits 2 are not carried'):
        await storage.lcr.merge(
            LcrRows(
                gateways=(Gateway("sipgw2", "sipgw2"),),
                capabilities=(GatewayCapability("sipgw2", PHONE, "01"),),
            )
        )


async def test_concurrent_writers_lose_nothing(databases: Databases, opened: OpenStorage) -> None:
    dsn = databases.clean()
    first, second = opened(dsn), opened(dsn)
    await first.lcr.replace_all(reference())

    async def add(storage: Storage, prefix: str) -> int:
        rule = await storage.lcr.add_rule(
            Rule(0, prefix), [RuleTarget(0, "sipgw1", PHONE)], assign_id=True
        )
        return rule.id

    ids = await asyncio.gather(*(add(first if i % 2 else second, f"9{i}") for i in range(6)))
    assert sorted(ids) == [2, 3, 4, 5, 6, 7]
    snapshot = await first.lcr.load()
    assert sorted(r.prefix for r in snapshot.rows.rules if r.id > 1) == [f"9{i}" for i in range(6)]
    assert snapshot.version == 7


async def test_a_load_sees_one_state(databases: Databases, opened: OpenStorage) -> None:
    """Loads running while imports replace everything see one import or the other, whole."""
    dsn = databases.clean()
    writer, reader = opened(dsn), opened(dsn)
    states = {1: reference(), 0: small()}
    await writer.lcr.replace_all(states[1])

    async def write() -> None:
        for round_ in range(6):
            await writer.lcr.replace_all(states[round_ % 2])

    async def read() -> list[tuple[int, LcrRows]]:
        seen = []
        for _ in range(12):
            snapshot = await reader.lcr.load()
            seen.append((snapshot.version, snapshot.rows))
            await asyncio.sleep(0)
        return seen

    _, seen = await asyncio.gather(write(), read())
    for version, rows in seen:
        assert rows == states[version % 2]
