"""The roles' garbage collection policy (roles/collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sipfleet.roles.collector import NEVER, YOUNG_THRESHOLD, Collector, PauseRecorder


def test_pauses_are_reported_by_their_bucket_and_the_longest_exactly() -> None:
    pauses = PauseRecorder()
    assert pauses.percentile(0.999) == 0.0
    for _ in range(998):
        pauses.record(30e-6)
    pauses.record(3e-3)
    pauses.record(0.4)  # beyond the last bucket
    assert pauses.count == 1000
    assert pauses.percentile(0.5) == pytest.approx(50e-6)
    assert pauses.percentile(0.999) == pytest.approx(5e-3)
    assert pauses.percentile(1.0) == pytest.approx(0.4)
    assert pauses.longest == pytest.approx(0.4)
    assert "p99.9 <= 5.00 ms" in pauses.summary()


def test_a_full_sweep_waits_for_a_quiet_moment_unless_long_overdue() -> None:
    busy = True
    collector = Collector(lambda: not busy, full_interval=600, forced_interval=3600)
    assert not collector.sweep_due(100)
    assert not collector.sweep_due(700)  # due, but the role is busy
    busy = False
    assert collector.sweep_due(700)
    busy = True
    assert collector.sweep_due(3600)  # never quiet for an hour: anyway


@pytest.fixture
def installed() -> Iterator[Collector]:
    before = gc.get_threshold()
    collector = Collector()
    collector.install()
    try:
        yield collector
    finally:
        collector.uninstall()
        gc.set_threshold(*before)


def test_only_the_young_generation_is_collected_automatically(installed: Collector) -> None:
    assert gc.get_threshold() == (YOUNG_THRESHOLD, NEVER, NEVER)
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # start-up's objects are never walked again
    walks = installed.pauses.count
    older = [generation["collections"] for generation in gc.get_stats()[1:]]
    for _ in range(50):  # cycles, each YOUNG_THRESHOLD objects: the walks find them
        ring: list[object] = [[] for _ in range(YOUNG_THRESHOLD)]
        ring.append(ring)
        del ring
    assert installed.pauses.count > walks
    assert [generation["collections"] for generation in gc.get_stats()[1:]] == older


def test_a_sweep_finds_an_old_cycle(installed: Collector) -> None:
    kept = [{"self": None}]
    kept[0]["self"] = kept[0]  # type: ignore[assignment]
    gc.collect(0)  # survives a young walk: now old, out of the automatic walks' reach
    del kept
    assert installed.sweep() >= 1
    assert installed.full_sweeps == 1
