"""`sipfleet up` keeps a failing role to itself, and `sipfleet status` shows it.

A real `up` (one LB, registrar and proxy on free ports) with a short back-off: its
registrar is killed with SIGKILL seven times in well under a minute (the old supervisor
gave up at the sixth and stopped the LB and proxy with it). Each restart waits twice as
long as the one before, up to the cap; the LB and proxy keep their pids and answer
OPTIONS; `sipfleet status` names the registrar restarting and exits 1, then 0 once it is
back. A role that cannot start at all at start-up is an error naming it.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sipfleet.cli.status import write_status
from sipfleet.cli.up import Backoff
from tests.cli.conftest import sipfleet
from tests.cli.test_up_cluster import start_up, wait_for
from tests.integration.harness import RawUa

pytestmark = pytest.mark.usefixtures("clean_environment")

KILLS = 7  # more than the six within a minute the old supervisor survived
FIRST, CAP = 0.1, 3.2  # back-off of this test: 0.1, 0.2 ... 3.2 s


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(1.0, 30.0, stable=60.0)
    assert [backoff.failed(ran_for=2.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.failures == 7
    assert backoff.failed(ran_for=60.0) == 1.0  # it had run a while: a new series
    assert backoff.failed(ran_for=0.5) == 2.0
    many = Backoff(1.0, 30.0)
    assert [many.failed(ran_for=0.0) for _ in range(2000)][-1] == 30.0  # no overflow


def status(capsys: pytest.CaptureFixture[str], data_dir: Path) -> tuple[int, dict[str, Any]]:
    """`sipfleet status --json`: its exit status and each role by name."""
    code, out, _ = sipfleet(capsys, "status", "--data-dir", str(data_dir), "--json")
    printed = json.loads(out)
    return code, {role["name"]: role for role in printed["roles"]}


def answers_options(port: int) -> bool:
    phone = RawUa(("127.0.0.1", port))
    try:
        phone.request("OPTIONS", f"sip:127.0.0.1:{port}")
        phone.expect_response(200, timeout=5)
        return True
    finally:
        phone.close()


def test_a_role_that_keeps_failing_is_restarted_with_growing_delays_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backoff = ("--restart-delay", str(FIRST), "--restart-delay-max", str(CAP))
    with start_up(tmp_path, *backoff, registrars=1, proxies=1) as up:
        data_dir = up.data_dir
        wait_for(lambda: status(capsys, data_dir)[0] == 0, timeout=60)
        code, roles = status(capsys, data_dir)
        assert sorted(roles) == ["lb", "proxy", "registrar"]
        healthy = {name: roles[name]["pid"] for name in ("lb", "proxy")}

        killed: list[int] = []
        delays: list[float] = []
        first_kill = time.monotonic()
        for kill in range(1, KILLS + 1):
            # The registrar as soon as it has a process (running or still starting).
            wait_for(
                lambda: status(capsys, data_dir)[1]["registrar"]["pid"] not in (None, *killed), 30
            )
            pid = status(capsys, data_dir)[1]["registrar"]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_for(lambda n=kill: status(capsys, data_dir)[1]["registrar"]["failures"] == n, 10)
            code, roles = status(capsys, data_dir)
            assert up.process.poll() is None, up.output
            assert code == 1
            assert roles["registrar"]["last_exit"] == "killed by SIGKILL"
            delays.append(roles["registrar"]["delay"])
        assert time.monotonic() - first_kill < 60, "the kills must fall within a minute"
        assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 3.2]

        # A wait long enough (3.2 s) to see it restarting, the others untouched and answering.
        code, out, _ = sipfleet(capsys, "status", "--data-dir", str(data_dir))
        assert code == 1
        line = next(line for line in out.splitlines() if line.split()[:1] == ["registrar"])
        assert "failed 7 times in a row" in line
        delay = float(line.split("restarting in ")[1].split(" s,")[0])
        assert 0 <= delay <= CAP
        assert "killed by SIGKILL" in line
        assert up.process.poll() is None, up.output
        assert answers_options(up.ports["lb"])
        assert answers_options(up.ports["proxy"])
        code, roles = status(capsys, data_dir)
        assert {name: roles[name]["pid"] for name in healthy} == healthy
        assert all(roles[name]["state"] == "running" for name in healthy)
        assert all(roles[name]["restarts"] == 0 for name in healthy)

        wait_for(lambda: status(capsys, data_dir)[0] == 0, timeout=30)
        code, roles = status(capsys, data_dir)
        assert roles["registrar"]["restarts"] == KILLS
        assert roles["registrar"]["pid"] not in killed
        printed = up.output
        assert printed.count("sipfleet up: registrar (pid ") == KILLS
        assert "failed 7 times in a row; next attempt in 3.2 s" in printed
        assert "keeps failing" not in printed

        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=30) == 0
        code, _, err = sipfleet(capsys, "status", "--data-dir", str(data_dir))
        assert code == 3
        assert "sipfleet up is not running" in err


def test_a_role_that_cannot_start_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "up.toml"
        config.write_text(
            f'[node]\ncluster_secret = "s"\n[registrar]\nlisten = ["udp:127.0.0.1:{port}"]\n'
            f'[lb]\nlisten = ["udp:127.0.0.1:{_free_udp()}"]\n'
            f'[proxy]\nlisten = ["udp:127.0.0.1:{_free_udp()}"]\n'
        )
        data_dir = tmp_path / "data"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sipfleet",
                "up",
                "-c",
                str(config),
                "--data-dir",
                str(data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert "sipfleet: registrar did not start (exit status 1" in result.stderr
    assert "Address already in use" in result.stderr  # the role's own reason, just above
    assert not (data_dir / "run" / "status.json").exists()
    for ready in (data_dir / "run").glob("*.ready"):  # the roles that did start: stopped
        pid = json.loads(ready.read_text())["pid"]
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=10)


def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_of_an_up_that_is_gone_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = sipfleet(capsys, "status", "--data-dir", str(tmp_path))
    assert code == 3
    assert "sipfleet up is not running (no " in err

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)  # reaped: its pid names no process now
    (tmp_path / "run").mkdir()
    role = {"name": "lb", "role": "lb", "pid": gone.pid, "state": "running", "restarts": 0}
    write_status(
        tmp_path / "run" / "status.json",
        {"pid": gone.pid, "started_at": 0, "data_dir": str(tmp_path), "roles": [role]},
    )
    code, out, err = sipfleet(capsys, "status", "--data-dir", str(tmp_path))
    assert code == 3
    assert f"was left by pid {gone.pid}, gone" in err
    code, out, _ = sipfleet(capsys, "status", "--data-dir", str(tmp_path), "--json")
    assert (code, json.loads(out)["up"]) == (3, "not running")

    # The same file from a live process whose pid was recorded with another start time:
    # a later process that got the pid is not the `up` that wrote it.
    role["pid"] = os.getpid()
    write_status(
        tmp_path / "run" / "status.json",
        {"pid": os.getpid(), "pid_started": -1, "started_at": 0, "data_dir": "", "roles": [role]},
    )
    assert sipfleet(capsys, "status", "--data-dir", str(tmp_path))[0] == 3


def test_status_finds_the_data_dir_as_up_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --data-dir: SIPFLEET_DATA_DIR (or a config's node.data_dir), as for `up`."""
    (tmp_path / "run").mkdir()
    role = {"name": "lb", "role": "lb", "pid": os.getpid(), "state": "running", "restarts": 0}
    write_status(
        tmp_path / "run" / "status.json",
        {"pid": os.getpid(), "started_at": time.time(), "data_dir": str(tmp_path), "roles": [role]},
    )
    monkeypatch.setenv("SIPFLEET_DATA_DIR", str(tmp_path))
    code, out, _ = sipfleet(capsys, "status")
    assert code == 0, out
    assert f"sipfleet up: pid {os.getpid()}" in out
    monkeypatch.delenv("SIPFLEET_DATA_DIR")
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path}"\n')
    assert sipfleet(capsys, "status", "-c", str(config))[0] == 0


def test_the_systemd_unit_never_gives_up_on_a_role_nor_ties_roles_together() -> None:
    path = Path(__file__).parents[2] / "examples" / "cluster" / "systemd" / "sipfleet@.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(path)
    assert (
        unit["Unit"]["StartLimitIntervalSec"] == "0"
    )  # never "start request repeated too quickly"
    assert unit["Service"]["Restart"] == "always"
    assert 1 <= float(unit["Service"]["RestartSec"]) <= 60
    for section in unit.sections():
        for key in ("BindsTo", "PartOf", "Requires", "Requisite", "PropagatesStopTo"):
            assert key not in unit[section], f"{section}.{key} ties one role to another"
