"""Worker processes sharing ports with SO_REUSEPORT: spreading, restarts, shutdown."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.config.listen import ListenAddress
from sipfleet.sip import Response, parse_message
from sipfleet.transport.sockets import bind_for_workers, spread_at_random
from tests.transport.helpers import options

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    def __init__(
        self,
        count: int,
        max_restarts: int = 5,
        hang_after: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> None:
        argv = [str(count), str(max_restarts), str(hang_after)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.transport.worker_app", *argv],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 15)
        line = self.process.stdout.readline().decode() if ready else ""
        assert line.startswith("READY "), f"worker app did not start: {line!r}"
        self.udp_port, self.tcp_port = (int(p) for p in line.split()[1:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture
def two_workers() -> Iterator[Workers]:
    workers = Workers(2)
    try:
        yield workers
    finally:
        workers.stop()


def worker_of(data: bytes) -> tuple[int, int]:
    response = parse_message(data)
    assert isinstance(response, Response)
    assert response.status == 200
    index, pid = (int(x) for x in (response.header("x-worker") or "").split())
    return index, pid


def ask_udp(port: int, clients: int = 32) -> dict[int, int]:
    """One OPTIONS from each of ``clients`` source ports; {worker index: pid} answering."""
    seen: dict[int, int] = {}
    for n in range(clients):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            via = f"127.0.0.1:{sock.getsockname()[1]}"
            sock.sendto(options(via, branch=f"z9hG4bK-{n}"), ("127.0.0.1", port))
            data, source = sock.recvfrom(65536)
            assert source == ("127.0.0.1", port)  # every worker answers from the shared port
            index, pid = worker_of(data)
            seen[index] = pid
    return seen


def ask_tcp(port: int, connections: int = 16) -> set[int]:
    seen = set()
    for n in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(options("127.0.0.1:1", branch=f"z9hG4bK-t{n}", transport="TCP"))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, "connection closed before the answer"
                data += chunk
            seen.add(worker_of(data)[0])
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_ports_and_both_answer(two_workers: Workers) -> None:
    seen = ask_udp(two_workers.udp_port)
    assert set(seen) == {0, 1}
    assert len(set(seen.values())) == 2  # two processes
    assert ask_tcp(two_workers.tcp_port) == {0, 1}


def test_sigterm_stops_supervisor_and_workers(two_workers: Workers) -> None:
    pids = ask_udp(two_workers.udp_port).values()
    assert two_workers.stop() == 0
    time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def test_crashed_worker_is_restarted_on_its_socket(two_workers: Workers) -> None:
    before = ask_udp(two_workers.udp_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(options("127.0.0.1:1", method="BYE"), ("127.0.0.1", two_workers.udp_port))
    deadline = time.monotonic() + 10
    while all(alive(pid) for pid in before.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = ask_udp(two_workers.udp_port)  # the restarted worker answers on its old socket
    assert set(after) == {0, 1}
    assert len(set(before.values()) & set(after.values())) == 1  # one new pid


def test_supervisor_gives_up_on_a_worker_that_keeps_crashing() -> None:
    workers = Workers(1, max_restarts=1)
    try:
        for _ in range(2):
            ask_udp(workers.udp_port, clients=1)  # wait until a worker serves
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(options("127.0.0.1:1", method="BYE"), ("127.0.0.1", workers.udp_port))
            time.sleep(0.2)
        assert workers.process.wait(timeout=10) == 1
        assert workers.process.stderr is not None
        assert b"giving up" in workers.process.stderr.read()
    finally:
        workers.stop()


def test_spread_at_random_deals_one_peers_datagrams_to_every_socket() -> None:
    sets = bind_for_workers([ListenAddress("udp", "127.0.0.1", 0)], 4)
    try:
        spread_at_random(sets[0][0], 4)
        port = sets[0][0].getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:  # one source address
            for _ in range(400):
                peer.sendto(b"x", ("127.0.0.1", port))
        time.sleep(0.2)
        counts = []
        for group in sets:
            group[0].setblocking(False)
            received = 0
            with contextlib.suppress(BlockingIOError):
                while group[0].recv(16):
                    received += 1
            counts.append(received)
        assert sum(counts) == 400
        assert min(counts) > 50  # by address hash, one socket would get all 400
    finally:
        for group in sets:
            for sock in group:
                sock.close()


def test_a_worker_whose_loop_stops_is_killed_and_restarted(tmp_path: Path) -> None:
    """SIGSTOP freezes worker 0 as a deadlock would: no heartbeat for ``hang_after``,
    so the supervisor kills it and starts another. Under systemd's watchdog
    (NOTIFY_SOCKET, WATCHDOG_USEC) the supervisor feeds it meanwhile."""
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify"))
    systemd.settimeout(5)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    workers = Workers(2, hang_after=2.0, env=env)
    try:
        assert systemd.recv(64) == b"WATCHDOG=1"
        before = ask_udp(workers.udp_port)
        os.kill(before[0], signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while alive(before[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(before[0])
        after = ask_udp(workers.udp_port)
        assert set(after) == {0, 1}
        assert after[0] != before[0]
        assert after[1] == before[1]
        assert systemd.recv(64) == b"WATCHDOG=1"  # fed again with every worker alive
        assert workers.process.stderr is not None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(before[0], signal.SIGKILL)
        workers.stop()
        systemd.close()
    assert b"its loop has not turned" in workers.process.stderr.read()
