"""Contract: each LB's view of its pool targets (lb_target_health), on every backend."""

from __future__ import annotations

from sipfleet.storage import LbTargetHealth, Storage


async def test_each_lb_reports_its_own_view(storage: Storage) -> None:
    targets = storage.lb_targets
    await targets.add("proxy", "sip:10.0.0.2:5080")
    await targets.add("proxy", "sip:10.0.0.3:5080")
    await targets.report_health(
        "lb1",
        [
            LbTargetHealth("lb1", "proxy", "sip:10.0.0.2:5080", "up", 100, 110),
            LbTargetHealth("lb1", "proxy", "sip:10.0.0.3:5080", "down", 105, 110),
        ],
    )
    await targets.report_health(
        "lb2", [LbTargetHealth("lb2", "proxy", "sip:10.0.0.2:5080", "unknown", 109, 110)]
    )
    views = await targets.list_health()
    assert [(v.lb, v.uri, v.health, v.changed, v.checked) for v in views] == [
        ("lb1", "sip:10.0.0.2:5080", "up", 100, 110),
        ("lb2", "sip:10.0.0.2:5080", "unknown", 109, 110),
        ("lb1", "sip:10.0.0.3:5080", "down", 105, 110),
    ]


async def test_a_report_replaces_the_previous_one_of_that_lb(storage: Storage) -> None:
    targets = storage.lb_targets
    first = [
        LbTargetHealth("lb1", "proxy", "sip:10.0.0.2:5080", "up", 100, 110),
        LbTargetHealth("lb1", "registrar", "sip:10.0.0.4:5070", "up", 100, 110),
    ]
    await targets.report_health("lb1", first)
    await targets.report_health("lb2", [first[0]])
    # lb1 no longer has the registrar, and its proxy went down.
    await targets.report_health(
        "lb1", [LbTargetHealth("lb1", "proxy", "sip:10.0.0.2:5080", "down", 115, 120)]
    )
    views = {(v.lb, v.pool, v.uri): (v.health, v.changed) for v in await targets.list_health()}
    assert views == {
        ("lb1", "proxy", "sip:10.0.0.2:5080"): ("down", 115),
        ("lb2", "proxy", "sip:10.0.0.2:5080"): ("up", 100),
    }
    await targets.report_health("lb2", [])
    assert [v.lb for v in await targets.list_health()] == ["lb1"]


async def test_removing_a_target_removes_every_view_of_it(storage: Storage) -> None:
    targets = storage.lb_targets
    await targets.add("proxy", "sip:10.0.0.2:5080")
    report = LbTargetHealth("lb1", "proxy", "sip:10.0.0.2:5080", "up", 100, 110)
    await targets.report_health("lb1", [report])
    assert await targets.remove("proxy", "sip:10.0.0.2:5080")
    assert await targets.list_health() == []
