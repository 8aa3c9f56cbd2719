"""Least-cost routing end to end: LB, registrar and proxy as processes, the LCR data
imported with `sipfleet lcr import`, sipp UAS processes as the gateways (127.0.0.1, a
port each), an authenticated sipp caller dialling through the LB. What each gateway
was sent is read from its own sipp message trace."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.cli import main
from tests.integration.harness import Cluster, free_port, running_cluster
from tests.integration.sipp import SippRun, run_sipp, start_sipp, stop_sipp

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
PASSWORD = "secret"
NUMBER = "4312345"
AUDIO = "m=audio 6000 RTP/AVP 0"
T38 = "m=image 6000 udptl t38"
TRUNK_TIMEOUT_S = 1.0
PROXY = {
    "lcr_reload_interval_s": 0.2,
    "lcr_trunk_timeout_s": TRUNK_TIMEOUT_S,
    "lcr_defunct_after": 3,
}
_names = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("lcr-cluster")) as cluster:
        cluster.add_subscriber("alice", DOMAIN, PASSWORD)
        cluster.add_lb_target("registrar", cluster.start("registrar"))
        cluster.add_lb_target("proxy", cluster.start("proxy", proxy=PROXY))
        cluster.start("lb", lb={"probe_interval_s": 1.0})
        yield cluster


# -- the LCR data -------------------------------------------------------------------------------
def reference_like(first: int, second: int) -> tuple[str, str, str]:
    """Two gateways as sipgw6 and sipgw2 of the reference example (phone prefix 01, fax
    prefix 02), the first at priority 1, the second at 3, for numbers starting 43. Names
    are new per test: the proxy's health of one test's gateways is not another's."""
    tag = next(_names)
    a, b = f"sipgw6-{tag}", f"sipgw2-{tag}"
    text = f"""
[[gateway]]
name = "{a}"
host = "127.0.0.1"
port = {first}
caps = [{{ cap = "phone", prefix = "01" }}, {{ cap = "fax", prefix = "02" }}]

[[gateway]]
name = "{b}"
host = "127.0.0.1"
port = {second}
caps = [{{ cap = "phone", prefix = "01" }}, {{ cap = "fax", prefix = "02" }}]

[[rule]]
id = 1
prefix = "43"

[[rule.target]]
gw = "{a}"
cap = ["phone", "fax"]
priority = 1

[[rule.target]]
gw = "{b}"
cap = "phone"
priority = 3

[[rule.target]]
gw = "{b}"
cap = "fax"
priority = 2
"""
    return text, a, b


def cli(cluster: Cluster, *args: str) -> str:
    """`sipfleet ...` against the cluster's database; its output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--db", cluster.dsn]) == 0
    return out.getvalue()


def version_in(output: str) -> int:
    found = re.search(r"LCR version (\d+)", output)
    assert found is not None, output
    return int(found.group(1))


def wait_until_loaded(cluster: Cluster, version: int, timeout: float = 5.0) -> None:
    """The proxy logs each LCR version it loads (its reload timer: 0.2 s here)."""
    proxy = cluster.roles["proxy"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"LCR version {version} loaded" in proxy.log_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"the proxy did not load LCR version {version}:\n{proxy.log_text()}")


def import_lcr(cluster: Cluster, workdir: Path, text: str) -> None:
    """`sipfleet lcr import FILE`, then wait until the proxy routes with it."""
    path = workdir / f"lcr-{next(_names)}.toml"
    path.write_text(text)
    wait_until_loaded(cluster, version_in(cli(cluster, "lcr", "import", str(path))))


# -- sipp ------------------------------------------------------------------------------------
def gateway(workdir: Path, scenario: str) -> tuple[int, subprocess.Popen[bytes]]:
    """A sipp gateway on a port of its own, for one call."""
    port = free_port()
    return port, start_sipp(scenario, workdir, local_port=port, timeout=20)


def rejecting(workdir: Path, status: int) -> tuple[int, subprocess.Popen[bytes]]:
    """A gateway answering ``status`` (scenarios lcr_gw_486, _500, _502, _503)."""
    return gateway(workdir, f"lcr_gw_{status}")


def dial(cluster: Cluster, workdir: Path, scenario: str, media: str = AUDIO) -> SippRun:
    """alice calls NUMBER at a foreign domain (off-net) through the LB."""
    fields = workdir / f"dial-{next(_names)}.csv"
    fields.write_text(f"SEQUENTIAL\n{NUMBER};pstn.example.net;alice;{DOMAIN};{media}\n")
    return run_sipp(
        scenario,
        f"127.0.0.1:{cluster.roles['lb'].port}",
        workdir,
        local_port=free_port(),
        inf=fields,
        timeout=20,
        extra=["-au", "alice", "-ap", PASSWORD],
    )


def finals(run: SippRun) -> list[int]:
    """Status codes of the final responses the caller received, in order."""
    received = re.findall(r"message received[^\n]*\n\s*\n?SIP/2\.0 (\d{3})", run.messages)
    return [int(code) for code in received if int(code) >= 200]


def invites_seen(workdir: Path, scenario: str, port: int) -> list[str]:
    """The Request-URIs of the INVITEs a sipp gateway received (its -trace_msg file)."""
    trace = workdir / f"{scenario}-{port}.msg"
    text = trace.read_text(errors="replace") if trace.exists() else ""
    return sorted(set(re.findall(r"message received[^\n]*\n\s*\n?INVITE (\S+) SIP/2\.0", text)))


def done(process: subprocess.Popen[bytes], wait: float = 10.0) -> int:
    return stop_sipp(process, wait=wait)


# -- the tests ----------------------------------------------------------------------------------
def test_503_from_the_first_gateway_the_second_answers(cluster: Cluster, tmp_path: Path) -> None:
    port1, gw1 = rejecting(tmp_path, 503)
    port2, gw2 = gateway(tmp_path, "lcr_gw_answer")
    import_lcr(cluster, tmp_path, reference_like(port1, port2)[0])
    result = dial(cluster, tmp_path, "lcr_uac_call")
    assert result.ok, result.explain()
    assert finals(result)[-2:] == [200, 200]  # the INVITE's 200, then the BYE's
    assert [done(gw1), done(gw2)] == [0, 0]
    assert invites_seen(tmp_path, "lcr_gw_503", port1) == [f"sip:01{NUMBER}@127.0.0.1:{port1}"]
    assert invites_seen(tmp_path, "lcr_gw_answer", port2) == [f"sip:01{NUMBER}@127.0.0.1:{port2}"]


def test_a_t38_offer_goes_out_as_fax_with_the_fax_prefix(cluster: Cluster, tmp_path: Path) -> None:
    port1, gw1 = gateway(tmp_path, "lcr_gw_answer")
    port2, gw2 = gateway(tmp_path, "lcr_gw_answer")
    import_lcr(cluster, tmp_path, reference_like(port1, port2)[0])
    result = dial(cluster, tmp_path, "lcr_uac_call", media=T38)
    assert result.ok, result.explain()
    assert done(gw1) == 0
    gw2.terminate()
    done(gw2)
    assert invites_seen(tmp_path, "lcr_gw_answer", port1) == [f"sip:02{NUMBER}@127.0.0.1:{port1}"]
    assert invites_seen(tmp_path, "lcr_gw_answer", port2) == []


def test_every_gateway_failing_gives_the_last_failure(cluster: Cluster, tmp_path: Path) -> None:
    port1, gw1 = rejecting(tmp_path, 500)
    port2, gw2 = rejecting(tmp_path, 502)
    import_lcr(cluster, tmp_path, reference_like(port1, port2)[0])
    result = dial(cluster, tmp_path, "lcr_uac_refused")
    assert result.ok, result.explain()
    assert finals(result)[-1] == 502
    assert [done(gw1), done(gw2)] == [0, 0]


def test_a_gateway_that_does_not_answer_in_time_is_cancelled_and_the_next_tried(
    cluster: Cluster, tmp_path: Path
) -> None:
    port1, gw1 = gateway(tmp_path, "lcr_gw_trying_silent")  # 100 Trying, then nothing
    port2, gw2 = gateway(tmp_path, "lcr_gw_answer")
    import_lcr(cluster, tmp_path, reference_like(port1, port2)[0])
    started = time.monotonic()
    result = dial(cluster, tmp_path, "lcr_uac_call")
    assert result.ok, result.explain()
    assert time.monotonic() - started >= TRUNK_TIMEOUT_S
    # the silent gateway got CANCEL (its scenario ends only with CANCEL, 487, ACK)
    assert [done(gw1), done(gw2)] == [0, 0]
    assert invites_seen(tmp_path, "lcr_gw_answer", port2) == [f"sip:01{NUMBER}@127.0.0.1:{port2}"]


def test_busy_from_the_first_gateway_ends_the_search(cluster: Cluster, tmp_path: Path) -> None:
    port1, gw1 = rejecting(tmp_path, 486)
    port2, gw2 = gateway(tmp_path, "lcr_gw_answer")
    import_lcr(cluster, tmp_path, reference_like(port1, port2)[0])
    result = dial(cluster, tmp_path, "lcr_uac_refused")
    assert result.ok, result.explain()
    assert finals(result)[-1] == 486
    assert done(gw1) == 0
    time.sleep(0.3)
    gw2.terminate()
    done(gw2)
    assert invites_seen(tmp_path, "lcr_gw_answer", port2) == []


def test_new_lcr_data_and_lcr_reload_route_the_next_call_without_a_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    proxy = cluster.roles["proxy"].process
    assert proxy is not None
    pid = proxy.pid
    port1, gw1 = gateway(tmp_path, "lcr_gw_answer")
    port2, gw2 = gateway(tmp_path, "lcr_gw_answer")
    import_lcr(cluster, tmp_path, reference_like(port1, port2)[0])
    assert dial(cluster, tmp_path, "lcr_uac_call").ok
    assert done(gw1) == 0  # to the first gateway

    text, first, _ = reference_like(port2, port1)  # the other way round: port2 first
    import_lcr(cluster, tmp_path, text)
    assert dial(cluster, tmp_path, "lcr_uac_call").ok
    assert done(gw2) == 0

    # an operator edits the tables by hand, then `sipfleet lcr reload`
    port3, gw3 = gateway(tmp_path, "lcr_gw_answer")
    database = cluster.workdir / "sipfleet.db"
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE lcr_gw SET port = ? WHERE name = ?", (port3, first))
    wait_until_loaded(cluster, version_in(cli(cluster, "lcr", "reload")))
    assert dial(cluster, tmp_path, "lcr_uac_call").ok
    assert done(gw3) == 0
    assert invites_seen(tmp_path, "lcr_gw_answer", port3) == [f"sip:01{NUMBER}@127.0.0.1:{port3}"]
    assert proxy.poll() is None
    assert proxy.pid == pid
