"""Pools changed while calls go on: a proxy added (it gets its share of new Call-IDs),
removed (its share moves), killed (taken out within two probe intervals, the other
carries the calls) and back (put in again). Which proxy carried a call is read from the
caller's 200 OK: the proxy's own Record-Route names its port."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipfleet.cli import main
from tests.integration.harness import Cluster, RoleProcess, free_port, running_cluster
from tests.integration.sipp import SippRun, register_scenario, run_sipp, start_sipp, stop_sipp

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
PASSWORD = "secret"
PROBE_INTERVAL_S = 1.0
LB_SETTINGS = {"probe_interval_s": PROBE_INTERVAL_S, "pool_reload_s": 0.5}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    overrides = {"registrar": {"authenticate": False}}
    with running_cluster(tmp_path / "cluster", overrides=overrides) as cluster:
        cluster.add_subscriber("alice", DOMAIN, PASSWORD)
        cluster.add_lb_target("registrar", cluster.start("registrar"))
        cluster.add_lb_target("proxy", cluster.start("proxy", name="proxy1"))
        cluster.start("lb", lb=LB_SETTINGS)
        yield cluster


@pytest.fixture
def callee(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """bob, registered through the LB, answering every call (and the LB's keepalives)."""
    port = free_port()
    scenario = register_scenario(tmp_path, user="bob", authenticate=False)
    result = run_sipp(scenario, lb(cluster), tmp_path, local_port=port)
    assert result.ok, result.explain()
    phone = start_sipp(
        "proxy_uas_answer", tmp_path, local_port=port, calls=500, timeout=60, extra=["-aa"]
    )
    yield "bob"
    phone.send_signal(signal.SIGTERM)
    stop_sipp(phone, wait=5)


def lb(cluster: Cluster) -> str:
    return f"127.0.0.1:{cluster.roles['lb'].port}"


def calls(cluster: Cluster, workdir: Path, count: int, name: str) -> SippRun:
    fields = workdir / f"{name}.csv"
    fields.write_text(f"SEQUENTIAL\nbob;{DOMAIN};alice\n")
    return run_sipp(
        "proxy_uac_auth_call",
        lb(cluster),
        workdir,
        local_port=free_port(),
        inf=fields,
        calls=count,
        rate=10,
        timeout=30,
        extra=["-au", "alice", "-ap", PASSWORD],
    )


def carriers(run: SippRun) -> Counter[int]:
    """How many calls each proxy (by port) carried: one 200 OK to an INVITE per call."""
    found: Counter[int] = Counter()
    for block in run.messages.split("-----------------------------------------------"):
        if "message received" not in block or "SIP/2.0 200 OK" not in block:
            continue
        if not re.search(r"CSeq: \d+ INVITE", block):
            continue
        ports = re.findall(r"<sip:127\.0\.0\.1:(\d+);lr[;>]", block)  # no user part: a proxy
        found.update(int(port) for port in set(ports))
    return found


def cli(db: str, *args: str) -> int:
    return main(["lb", "target", *args, "--db", db])


def health(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`sipfleet lb target list --json`: the LB's view, by target URI."""
    capsys.readouterr()
    assert main(["lb", "target", "list", "--json", "--db", cluster.dsn]) == 0
    records = json.loads(capsys.readouterr().out)
    return {r["uri"]: r["health"].get("lb", {}).get("health", "none") for r in records}


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds it took; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def uri(node: RoleProcess) -> str:
    return f"sip:127.0.0.1:{node.port}"


def test_a_proxy_added_and_removed_at_run_time(
    cluster: Cluster, callee: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = cluster.roles["proxy1"]
    before = calls(cluster, tmp_path, 10, "before")
    assert before.ok, before.explain()
    assert carriers(before) == Counter({first.port: 10})

    second = cluster.start("proxy", name="proxy2")
    assert cli(cluster.dsn, "add", uri(second), "--pool", "proxy") == 0
    wait_until(lambda: health(cluster, capsys).get(uri(second)) == "up", timeout=5)
    both = calls(cluster, tmp_path, 20, "both")
    assert both.ok, both.explain()
    shares = carriers(both)
    assert set(shares) == {first.port, second.port}  # each gets a share of new Call-IDs
    assert sum(shares.values()) == 20

    assert cli(cluster.dsn, "remove", uri(second)) == 0
    time.sleep(1.5)  # a few reloads
    after = calls(cluster, tmp_path, 10, "after")
    assert after.ok, after.explain()
    assert carriers(after) == Counter({first.port: 10})  # its share moved back


def test_a_killed_proxy_is_taken_out_and_put_back(
    cluster: Cluster, callee: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = cluster.roles["proxy1"]
    second = cluster.start("proxy", name="proxy2")
    cluster.add_lb_target("proxy", second)
    wait_until(lambda: health(cluster, capsys).get(uri(second)) == "up", timeout=5)

    fields = tmp_path / "running.csv"
    fields.write_text(f"SEQUENTIAL\nbob;{DOMAIN};alice\n")
    running = start_sipp(
        "proxy_uac_auth_call",
        tmp_path,
        local_port=free_port(),
        target=lb(cluster),
        calls=40,
        timeout=20,
        extra=["-inf", str(fields), "-au", "alice", "-ap", PASSWORD, "-r", "5"],
    )
    time.sleep(1.5)
    assert second.process is not None
    second.process.send_signal(signal.SIGKILL)  # mid-run, no goodbye
    second.process.wait(timeout=5)
    took = wait_until(lambda: health(cluster, capsys).get(uri(second)) == "down", timeout=5)
    assert took <= 2 * PROBE_INTERVAL_S + 0.5  # the view is written at once on a change
    stop_sipp(running, wait=1)  # calls placed on it before then are lost; not asserted

    after = calls(cluster, tmp_path, 12, "after-kill")
    assert after.ok, after.explain()  # every new call goes through the other proxy
    assert carriers(after) == Counter({first.port: 12})

    again = cluster.start(
        "proxy", name="proxy2-again", proxy={"listen": [f"udp:127.0.0.1:{second.port}"]}
    )
    assert again.port == second.port
    wait_until(lambda: health(cluster, capsys).get(uri(second)) == "up", timeout=5)
    back = calls(cluster, tmp_path, 20, "back")
    assert back.ok, back.explain()
    assert set(carriers(back)) == {first.port, second.port}


def test_no_proxy_left_is_503(cluster: Cluster, tmp_path: Path) -> None:
    first = cluster.roles["proxy1"]
    assert cli(cluster.dsn, "disable", uri(first)) == 0
    time.sleep(1.2)
    run = calls(cluster, tmp_path, 1, "none")
    assert not run.ok
    assert "SIP/2.0 503 No proxy available" in run.messages
