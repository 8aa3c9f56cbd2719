"""The gateways' health state machine (sans-IO): consecutive failures make a gateway
defunct, it is probed while it is, and comes back on an answer or, on probation, when
its defunct time is over."""

from __future__ import annotations

import pytest

from sipfleet.routing.gateway_health import GatewayHealth, HealthChange, is_failure


def health() -> GatewayHealth:
    return GatewayHealth(defunct_after=3, defunct_for=60.0, probe_interval=5.0)


def fail(state: GatewayHealth, times: int, now: float = 0.0, status: int = 503) -> list[object]:
    return [state.attempt_ended("gw1", status, False, now) for _ in range(times)]


def test_what_counts_as_a_failure_of_the_gateway() -> None:
    assert all(is_failure(status) for status in (408, 500, 502, 503, 504, 599))
    assert not any(is_failure(status) for status in (200, 302, 404, 480, 486, 487, 600, 603))
    assert not is_failure(501)  # a method it does not implement: it is there all the same
    # it rang first: it reached the far end, the failure is not the gateway's
    assert not is_failure(408, progressed=True)
    assert not is_failure(503, progressed=True)


def test_defunct_after_the_configured_failures_in_a_row() -> None:
    state = health()
    assert fail(state, 2) == [None, None]
    assert not state.is_defunct("gw1", 0.0)
    (change,) = fail(state, 1, status=408)
    assert change == HealthChange("gw1", True, "3 failures in a row, last 408")
    assert state.is_defunct("gw1", 1.0)
    assert not state.is_defunct("gw2", 1.0)
    assert state.defunct(1.0) == ["gw1"]


def test_an_answer_in_between_starts_the_count_again() -> None:
    state = health()
    fail(state, 2)
    assert state.attempt_ended("gw1", 486, False, 0.0) is None  # busy: the gateway works
    assert state.failures("gw1") == 0
    fail(state, 2)
    assert not state.is_defunct("gw1", 0.0)


def test_a_ringing_attempt_that_times_out_is_not_counted() -> None:
    state = health()
    for _ in range(5):
        state.attempt_ended("gw1", 408, True, 0.0)
    assert not state.is_defunct("gw1", 0.0)


def test_calls_still_failing_while_defunct_change_nothing() -> None:
    state = health()
    fail(state, 3)
    assert fail(state, 4, now=1.0) == [None] * 4
    assert state.is_defunct("gw1", 59.0)


def test_probes_every_interval_while_defunct() -> None:
    state = health()
    fail(state, 3, now=100.0)
    assert state.probes_due(100.0) == []  # it has just failed: not at once
    assert state.probes_due(105.0) == ["gw1"]
    assert state.probes_due(107.0) == []
    assert state.probes_due(110.0) == ["gw1"]


def test_an_answered_probe_brings_it_back_at_once() -> None:
    state = health()
    fail(state, 3)
    assert state.probe_answered("gw1", 503) is None  # "unavailable" is no sign of life
    assert state.is_defunct("gw1", 6.0)
    assert state.probe_answered("gw1", 405) == HealthChange("gw1", False, "answered OPTIONS (405)")
    assert not state.is_defunct("gw1", 6.0)
    assert state.failures("gw1") == 0
    assert state.probes_due(20.0) == []
    assert state.probe_answered("gw1", 200) is None  # a late answer: nothing to change


def test_a_call_that_ends_well_while_defunct_brings_it_back() -> None:
    state = health()
    fail(state, 3)
    change = state.attempt_ended("gw1", 200, True, 1.0)
    assert change is not None
    assert not change.defunct
    assert not state.is_defunct("gw1", 1.0)


def test_when_the_defunct_time_is_over_it_is_back_on_probation() -> None:
    state = health()
    fail(state, 3, now=0.0)
    assert state.expire(59.0) == []
    assert state.expire(60.0) == [HealthChange("gw1", False, "defunct time over, on probation")]
    assert not state.is_defunct("gw1", 60.0)
    assert state.probes_due(70.0) == []  # in service: no probes
    (change,) = fail(state, 1, now=61.0)  # one more failure: out again
    assert change is not None
    assert change.defunct
    assert state.is_defunct("gw1", 61.0)


def test_a_gateway_gone_from_the_data_is_forgotten() -> None:
    state = health()
    fail(state, 3)
    state.forget("gw1")
    assert not state.is_defunct("gw1", 1.0)
    assert state.probes_due(100.0) == []


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="defunct_after"):
        GatewayHealth(defunct_after=0)
    with pytest.raises(ValueError):
        GatewayHealth(probe_interval=0)
