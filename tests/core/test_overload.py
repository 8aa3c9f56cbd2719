"""Overload detection from the receive backlog and loop lag (sans-IO part)."""

from __future__ import annotations

import socket

from sipfleet.core.overload import AnswerBudget, OverloadMonitor, receive_backlog


def test_a_full_receive_buffer_means_overload_until_it_stays_calm() -> None:
    monitor = OverloadMonitor(enter_backlog=1000, leave_backlog=100, calm=3)
    assert not monitor.observe(0.0, 999)
    assert monitor.observe(0.0, 1000)
    assert monitor.observe(0.0, 50)
    assert monitor.observe(0.0, 50)
    assert monitor.observe(0.0, 500)  # not calm yet: the count starts again
    assert monitor.observe(0.0, 0)
    assert monitor.observe(0.0, 0)
    assert not monitor.observe(0.0, 0)
    assert monitor.episodes == 1


def test_a_late_loop_means_overload_too() -> None:
    monitor = OverloadMonitor(enter_lag=0.1, leave_lag=0.02, calm=1)
    assert monitor.observe(0.15, 0)
    assert monitor.observe(0.05, 0)  # better, not calm
    assert not monitor.observe(0.01, 0)


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
