"""sd_notify without systemd: the datagrams a role sends, where and when it sends none."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sipfleet.transport.systemd import notify, watchdog_period


def test_notify_sends_one_datagram_of_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert notify("READY=1", "STATUS=proxy ready")
        assert systemd.recv(256) == b"READY=1\nSTATUS=proxy ready"


def test_an_abstract_socket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sipfleet-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1")
        assert systemd.recv(64) == b"WATCHDOG=1"


def test_outside_systemd_nothing_is_sent_and_nothing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))  # systemd went away
    assert not notify("READY=1")


def test_the_watchdog_is_fed_at_half_its_period_by_the_process_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog_period() is None
