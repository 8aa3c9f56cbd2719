"""`sipfleet run` under systemd (`Type=notify`, `WatchdogSec`): READY=1 once the role
listens, WATCHDOG=1 while it runs (from its loop, or with workers from the supervisor
while every worker's loop turns), STOPPING=1 when told to stop. systemd is played by a
datagram socket of the test (NOTIFY_SOCKET)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import running_cluster


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # fed every 0.5 s
    yield listener
    listener.close()


def notifications(systemd: socket.socket, until: bytes) -> list[bytes]:
    seen: list[bytes] = []
    while until not in seen:
        seen.extend(systemd.recv(256).split(b"\n"))
    return seen


@pytest.mark.parametrize("workers", [1, 2])
def test_a_role_tells_systemd_it_is_ready_alive_and_stopping(
    tmp_path: Path, systemd: socket.socket, workers: int
) -> None:
    with running_cluster(tmp_path / "cluster") as cluster:
        registrar = cluster.start("registrar", node={"workers": workers})
        first = notifications(systemd, b"READY=1")
        assert b"STATUS=registrar ready" in first
        assert b"WATCHDOG=1" in notifications(systemd, b"WATCHDOG=1")
        assert b"WATCHDOG=1" in notifications(systemd, b"WATCHDOG=1")  # again, and again
        cluster.stop_role(registrar)
        assert b"STOPPING=1" in notifications(systemd, b"STOPPING=1")
