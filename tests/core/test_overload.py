"""Overload detection from the receive backlog and loop lag (sans-IO part)."""

from __future__ import annotations

import socket

from sipfleet.core.overload import AnswerBudget, OverloadMonitor, receive_backlog

PERIOD = 0.05  # the watch's check interval


def feed(monitor: OverloadMonitor, samples: list[tuple[float, int]], start: float = 0.0) -> bool:
    """One check per PERIOD from ``start``, (lag, backlog) each; the last decision."""
    overloaded = False
    for n, (lag, backlog) in enumerate(samples):
        overloaded = monitor.observe(start + n * PERIOD, lag, backlog)
    return overloaded


def test_a_backlog_that_stays_full_is_overload_once_it_lasted() -> None:
    monitor = OverloadMonitor(enter_backlog=1000, leave_backlog=100, sustain=0.5, calm=3)
    assert not feed(monitor, [(0.0, 1200)] * 10)  # 0.45 s: not yet
    assert monitor.observe(0.5, 0.0, 1300)
    assert monitor.episodes == 1


def test_overload_ends_after_calm_checks_in_a_row() -> None:
    monitor = OverloadMonitor(enter_backlog=1000, leave_backlog=100, sustain=0.5, calm=3)
    assert feed(monitor, [(0.0, 4000)] * 11)
    assert monitor.observe(1.0, 0.0, 50)
    assert monitor.observe(1.05, 0.0, 50)
    assert monitor.observe(1.1, 0.0, 500)  # not calm yet: the count starts again
    assert feed(monitor, [(0.0, 0)] * 2, start=1.15)
    assert not monitor.observe(1.25, 0.0, 0)
    assert monitor.episodes == 1


def test_a_pause_is_not_overload() -> None:
    """The loop stood still 200 ms: late once, a burst in the buffer, then it drains."""
    monitor = OverloadMonitor(enter_backlog=1000, sustain=0.5)
    burst = [(0.2, 3000)] + [(0.0, 3000 - 150 * n) for n in range(1, 20)]
    assert not any(monitor.observe(n * PERIOD, *sample) for n, sample in enumerate(burst))
    assert monitor.episodes == 0


def test_a_burst_that_drains_too_slowly_is_overload() -> None:
    monitor = OverloadMonitor(enter_backlog=1000, sustain=0.5)
    assert feed(monitor, [(0.0, 3000 - 10 * n) for n in range(12)])


def test_an_interruption_of_the_pressure_starts_the_window_again() -> None:
    monitor = OverloadMonitor(enter_backlog=1000, sustain=0.5)
    samples = [(0.0, 2000)] * 8 + [(0.0, 10)] + [(0.0, 2000)] * 8
    assert not feed(monitor, samples)


def test_a_loop_late_on_every_check_is_overload_too() -> None:
    """Where the backlog cannot be read (not Linux, TCP only), lag alone decides."""
    monitor = OverloadMonitor(enter_lag=0.1, leave_lag=0.02, sustain=0.5, calm=1)
    assert not feed(monitor, [(0.15, 0)] * 3)
    assert feed(monitor, [(0.15, 0)] * 8, start=0.15)
    assert monitor.observe(2.0, 0.05, 0)  # better, not calm
    assert not monitor.observe(2.05, 0.01, 0)


def test_receive_backlog_counts_unread_datagrams() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        listener.bind(("127.0.0.1", 0))
        backlog = receive_backlog([listener])
        assert backlog() == 0
        for _ in range(5):
            sender.sendto(b"x" * 500, listener.getsockname())
        assert backlog() >= 5 * 500
        listener.recv(2000)
        assert backlog() < 5 * 2500


def test_answer_budget_is_earned_by_served_requests_and_capped() -> None:
    budget = AnswerBudget(per_served=0.5, burst=2)
    assert [budget.take(), budget.take(), budget.take()] == [True, True, False]
    budget.served()
    assert not budget.take()  # half an answer earned: not enough yet
    budget.served()
    assert budget.take()
    for _ in range(100):
        budget.served()
    assert [budget.take() for _ in range(3)] == [True, True, False]  # at most burst saved
