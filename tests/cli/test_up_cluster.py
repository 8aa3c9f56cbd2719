"""`sipfleet up -c cluster.toml`: several registrars and proxies behind one LB on one host.

The plan (names, ports counted up, collisions named by key) is checked without processes;
then a real `sipfleet up` starts 1 LB, 2 registrars and 2 proxies on free ports, puts them
in the LB's pools, takes REGISTERs on both registrars and a call through LB and proxy, and
stops every process it started on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipfleet.cli import main
from sipfleet.cli.common import CliError
from sipfleet.cli.up import plan_instances
from sipfleet.config import config_from_dict
from sipfleet.sip import Request, Response
from tests.integration.harness import RawUa, free_port

DOMAIN = "example.com"


def plan(**sections: dict[str, object]) -> list[tuple[str, list[str]]]:
    config = config_from_dict(dict(sections))
    return [
        (i.name, [str(a) for a in i.listen])
        for i in plan_instances(config, ["lb", "registrar", "proxy"])
    ]


def test_the_default_plan_is_one_of_each_role() -> None:
    assert plan() == [
        ("lb", ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]),
        ("registrar", ["udp:127.0.0.1:5070"]),
        ("proxy", ["udp:127.0.0.1:5080"]),
    ]


def test_instances_count_ports_up_from_each_role_listen() -> None:
    planned = plan(
        cluster={"registrars": 2, "proxies": 3},
        registrar={"listen": ["udp:127.0.0.1:5070", "tcp:127.0.0.1:5070"]},
    )
    assert planned[1:] == [
        ("registrar1", ["udp:127.0.0.1:5070", "tcp:127.0.0.1:5070"]),
        ("registrar2", ["udp:127.0.0.1:5071", "tcp:127.0.0.1:5071"]),
        ("proxy1", ["udp:127.0.0.1:5080"]),
        ("proxy2", ["udp:127.0.0.1:5081"]),
        ("proxy3", ["udp:127.0.0.1:5082"]),
    ]


def test_overlapping_instances_are_refused_by_key() -> None:
    collision = r"proxy1 would listen on udp:127\.0\.0\.1:5070, which registrar2 uses too"
    with pytest.raises(CliError, match=collision):
        plan(
            cluster={"registrars": 2, "proxies": 2},
            proxy={"listen": ["udp:127.0.0.1:5070"]},
            registrar={"listen": ["udp:127.0.0.1:5069"]},
        )
    with pytest.raises(CliError, match=r"cluster: proxy\.listen udp:127\.0\.0\.1:0 cannot"):
        plan(cluster={"proxies": 2}, proxy={"listen": ["udp:127.0.0.1:0"]})


def test_an_unknown_cluster_key_is_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sipfleet", "up", "-c", "/dev/stdin"],
        input=b"[cluster]\nproxy = 2\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert b"cluster.proxy: unknown key" in result.stderr


def free_ports(count: int) -> int:
    """A port p with p .. p+count-1 free for UDP and TCP on 127.0.0.1 (right now)."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            for port in range(base + 1, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as sock:
                        sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


@dataclass
class StartedUp:
    process: subprocess.Popen[bytes]
    workdir: Path
    data_dir: Path
    ports: dict[str, int]  # the first listen port of each role

    @property
    def output(self) -> str:
        return (self.workdir / "up.log").read_text(errors="replace")


@contextlib.contextmanager
def start_up(
    workdir: Path, *args: str, registrars: int = 2, proxies: int = 2
) -> Iterator[StartedUp]:
    """`sipfleet up -c cluster.toml --data-dir DIR ARGS` on free ports (SQLite in DIR),
    printing to ``workdir/up.log``; stopped by PID (SIGTERM) at the end."""
    ports = {"lb": free_port(), "registrar": free_ports(registrars), "proxy": free_ports(proxies)}
    config = workdir / "cluster.toml"
    config.write_text(
        '[node]\ncluster_secret = "up-cluster-test"\n'
        f'[sip]\ndomains = ["{DOMAIN}"]\nauth_algorithms = ["MD5"]\n'
        f'[lb]\nlisten = ["udp:127.0.0.1:{ports["lb"]}"]\nprobe_interval_s = 1.0\n'
        f'[registrar]\nlisten = ["udp:127.0.0.1:{ports["registrar"]}"]\nauthenticate = false\n'
        f'[proxy]\nlisten = ["udp:127.0.0.1:{ports["proxy"]}"]\nauthenticate = false\n'
        f"[cluster]\nregistrars = {registrars}\nproxies = {proxies}\n"
    )
    data_dir = workdir / "data"
    command = ["up", "-c", str(config), "--data-dir", str(data_dir), *args]
    with (workdir / "up.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sipfleet", *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield StartedUp(process, workdir, data_dir, ports)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """`sipfleet up -c cluster.toml`: 2 registrars, 2 proxies, SQLite; stopped by PID."""
    with start_up(tmp_path) as started:
        yield started.process, tmp_path, started.ports["lb"]


def test_up_starts_the_cluster_on_one_host_and_stops_it(
    up: tuple[subprocess.Popen[bytes], Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    process, workdir, lb_port = up
    output = workdir / "up.log"
    wait_for(lambda: "Stop with Ctrl-C" in output.read_text(errors="replace"), timeout=60)
    printed = output.read_text(errors="replace")
    for name in ("lb", "registrar1", "registrar2", "proxy1", "proxy2"):
        assert f"\n  {name:<10} udp:127.0.0.1:" in printed, printed
    assert "database   sqlite sqlite://" in printed

    db = f"sqlite:///{workdir / 'data' / 'sipfleet.db'}"

    def targets() -> dict[str, str]:
        capsys.readouterr()
        assert main(["lb", "target", "list", "--json", "--db", db]) == 0
        records = json.loads(capsys.readouterr().out)
        return {
            f"{r['pool']} {r['uri']}": r["health"].get("sipfleet", {}).get("health", "none")
            for r in records
        }

    wait_for(lambda: list(targets().values()) == ["up"] * 4, timeout=15)
    assert sorted(p.split()[0] for p in targets()) == ["proxy"] * 2 + ["registrar"] * 2

    # REGISTERs by Call-ID land on both registrars (the binding's socket names the one
    # that stored it); then a call goes LB -> proxy -> LB -> the callee.
    lb = ("127.0.0.1", lb_port)
    phones = {user: RawUa(lb) for user in ("bob", "alice")}
    try:
        for i in range(12):
            phones["bob"].request("REGISTER", f"sip:{DOMAIN}", user=f"u{i}", expires=600)
            phones["bob"].expect_response(200)
        for user, phone in phones.items():
            phone.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
            phone.expect_response(200)
        capsys.readouterr()
        assert main(["location", "show", "--db", db]) == 0
        shown = capsys.readouterr().out
        registrar_sockets = {
            line.split("socket=")[1].split()[0] for line in shown.splitlines() if "socket=" in line
        }
        assert len(registrar_sockets) == 2, shown

        phones["alice"].request("INVITE", f"sip:bob@{DOMAIN}", user="alice")
        invite = phones["bob"].expect_request("INVITE")
        phones["bob"].answer(invite, 200)
        answer = phones["alice"].expect_response(200)
        assert isinstance(answer, Response)
        assert isinstance(invite, Request)
    finally:
        for phone in phones.values():
            phone.close()

    children = [
        json.loads(path.read_text())["pid"] for path in (workdir / "data" / "run").glob("*.ready")
    ]
    assert len(children) == 5
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{pid} still runs"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
