"""The edge guard's tables, with times passed in (no clock)."""

from __future__ import annotations

from sipfleet.core.lb.guard import (
    AuthLockouts,
    Reports,
    ScannerFilter,
    SourceLimits,
    lockout_key,
)


def test_a_source_gets_its_burst_then_its_rate() -> None:
    limits = SourceLimits(rate=10.0, burst=5.0, capacity=100)
    assert all(limits.admit("192.0.2.1", 0.0) for _ in range(5))
    assert not limits.admit("192.0.2.1", 0.0)
    assert limits.admit("192.0.2.1", 0.1)  # one token back after 1/rate
    assert not limits.admit("192.0.2.1", 0.1)


def test_one_flooding_source_leaves_others_alone() -> None:
    limits = SourceLimits(rate=10.0, burst=5.0, capacity=100)
    for _ in range(1000):
        limits.admit("192.0.2.66", 1.0)
    assert limits.admit("192.0.2.7", 1.0)


def test_the_table_never_grows_past_its_capacity() -> None:
    limits = SourceLimits(rate=10.0, burst=5.0, capacity=64)
    for index in range(10_000):
        assert limits.admit(f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}", 0.0)
    assert len(limits.buckets) <= 64


def test_a_quiet_source_refills_only_up_to_its_burst() -> None:
    limits = SourceLimits(rate=10.0, burst=3.0, capacity=100)
    limits.admit("192.0.2.1", 0.0)
    admitted = sum(limits.admit("192.0.2.1", 1000.0) for _ in range(10))
    assert admitted == 3


def test_lockout_after_the_allowed_failures_then_doubling() -> None:
    lockouts = AuthLockouts(failures=3, base_s=30.0, max_s=3600.0, capacity=100)
    key = lockout_key("alice", "198.51.100.9")
    assert [lockouts.failed(key, 0.0) for _ in range(3)] == [0.0, 0.0, 30.0]
    assert lockouts.locked(key, 29.9)
    assert not lockouts.locked(key, 30.0)
    assert lockouts.failed(key, 31.0) == 60.0  # the next miss after a lock locks again
    assert lockouts.locked(key, 90.9)
    assert lockouts.failed(key, 92.0) == 120.0


def test_lockout_never_exceeds_its_maximum() -> None:
    lockouts = AuthLockouts(failures=1, base_s=30.0, max_s=100.0, capacity=100)
    key = lockout_key("alice", "198.51.100.9")
    now, longest = 0.0, 0.0
    for _ in range(10):
        seconds = lockouts.failed(key, now)
        longest = max(longest, seconds)
        now += seconds + 1.0
    assert longest == 100.0


def test_a_lockout_of_one_source_leaves_the_users_own_address_alone() -> None:
    lockouts = AuthLockouts(failures=2, base_s=30.0, max_s=3600.0, capacity=100)
    for _ in range(50):
        lockouts.failed(lockout_key("alice", "198.51.100.9"), 1.0)
    assert lockouts.locked(lockout_key("alice", "198.51.100.9"), 2.0)
    assert not lockouts.locked(lockout_key("alice", "192.0.2.10"), 2.0)
    assert not lockouts.locked(lockout_key("bob", "198.51.100.9"), 2.0)


def test_failures_while_locked_do_not_count() -> None:
    lockouts = AuthLockouts(failures=2, base_s=30.0, max_s=3600.0, capacity=100)
    key = lockout_key("alice", "198.51.100.9")
    lockouts.failed(key, 0.0)
    assert lockouts.failed(key, 0.0) == 30.0
    assert lockouts.failed(key, 5.0) == 0.0  # answers to guesses sent before the lock
    assert lockouts.failed(key, 31.0) == 60.0


def test_a_right_answer_forgets_and_a_quiet_pair_starts_over() -> None:
    lockouts = AuthLockouts(failures=2, base_s=30.0, max_s=100.0, capacity=100)
    key = lockout_key("alice", "192.0.2.10")
    lockouts.failed(key, 0.0)
    lockouts.succeeded(key)
    assert lockouts.failed(key, 1.0) == 0.0  # the count started again
    assert lockouts.failed(key, 2.0) == 30.0
    assert lockouts.failed(key, 33.0) == 60.0
    assert lockouts.failed(key, 500.0) == 0.0  # quiet for max_s: forgotten


def test_lockout_table_is_bounded() -> None:
    lockouts = AuthLockouts(failures=5, base_s=30.0, max_s=3600.0, capacity=32)
    for index in range(5000):
        lockouts.failed(lockout_key(f"user{index}", "198.51.100.9"), 0.0)
    assert len(lockouts.pairs) <= 32


def test_lockout_key_keeps_a_bounded_username() -> None:
    assert len(lockout_key("x" * 10_000, "198.51.100.9")) < 100


def test_scanner_agents_match_case_insensitively() -> None:
    scanners = ScannerFilter(("friendly-scanner", "sipvicious"))
    assert scanners.is_scanner("friendly-scanner")
    assert scanners.is_scanner("SIPVicious 0.3.4")
    assert not scanners.is_scanner("Linphone/5.2 (belle-sip/5.2)")
    assert not scanners.is_scanner("baresip v2.9.0")


def test_reports_once_per_interval_with_the_count_since() -> None:
    reports = Reports(interval=60.0, capacity=100)
    assert reports.blocked("rate\x00198.51.100.9", 0.0) == 1
    assert [reports.blocked("rate\x00198.51.100.9", t) for t in (1.0, 2.0, 59.0)] == [0, 0, 0]
    assert reports.blocked("rate\x00198.51.100.9", 60.0) == 4
    assert reports.blocked("rate\x00198.51.100.10", 60.0) == 1
