"""The stateful proxy over real sockets, driven by sipp: callees register through the
registrar, callers authenticate to the proxy, calls are looked up in SQL."""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, free_port, running_cluster
from tests.integration.sipp import SippRun, run_sipp, start_sipp, stop_sipp

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
PASSWORD = "secret"
TIMER_C_S = 2
_users = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("proxy-cluster")) as cluster:
        cluster.add_subscriber("alice", DOMAIN, PASSWORD)
        cluster.add_subscriber("carol", DOMAIN, PASSWORD)  # never registers
        cluster.start("registrar")
        cluster.start("proxy", sip={"timer_c_s": TIMER_C_S})
        yield cluster


def new_callee(cluster: Cluster) -> str:
    """A subscriber of its own per test: no binding of another test can answer for it."""
    user = f"bob{next(_users)}"
    cluster.add_subscriber(user, DOMAIN, PASSWORD)
    return user


def register(cluster: Cluster, workdir: Path, user: str, port: int) -> None:
    users = workdir / f"reg-{user}-{port}.csv"
    users.write_text(f"SEQUENTIAL\n{user};{DOMAIN};{PASSWORD};{user}\n")
    result = run_sipp(
        "register_auth",
        f"127.0.0.1:{cluster.roles['registrar'].port}",
        workdir,
        local_port=port,
        inf=users,
        keys={"expires": "600"},
        extra=["-au", user, "-ap", PASSWORD],
    )
    assert result.ok, result.explain()


def device(cluster: Cluster, workdir: Path, user: str, scenario: str) -> subprocess.Popen[bytes]:
    """A sipp UAS registered as one of ``user``'s contacts, waiting for one call."""
    port = free_port()
    register(cluster, workdir, user, port)
    return start_sipp(scenario, workdir, local_port=port, calls=1, timeout=20)


def call(
    cluster: Cluster,
    workdir: Path,
    scenario: str,
    callee: str,
    *,
    password: str = PASSWORD,
    timeout: float = 20.0,
) -> SippRun:
    """alice calls ``callee`` through the proxy with ``scenario``."""
    fields = workdir / f"call-{callee}-{scenario}.csv"
    fields.write_text(f"SEQUENTIAL\n{callee};{DOMAIN};alice\n")
    return run_sipp(
        scenario,
        f"127.0.0.1:{cluster.roles['proxy'].port}",
        workdir,
        local_port=free_port(),
        inf=fields,
        timeout=timeout,
        extra=["-au", "alice", "-ap", password],
    )


def finals(run: SippRun) -> list[int]:
    """Status codes of the final responses the caller received, in order."""
    received = re.findall(r"message received[^\n]*\n\s*\n?SIP/2\.0 (\d{3})", run.messages)
    return [int(code) for code in received if int(code) >= 200]


def finished(*devices: subprocess.Popen[bytes]) -> list[int]:
    return [stop_sipp(each) for each in devices]


def test_basic_call_caller_hangs_up(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    phone = device(cluster, tmp_path, bob, "proxy_uas_answer")
    result = call(cluster, tmp_path, "proxy_uac_auth_call", bob)
    assert result.ok, result.explain()
    assert finished(phone) == [0]
    assert "Record-Route: <sip:127.0.0.1:" in result.messages


def test_basic_call_callee_hangs_up(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    phone = device(cluster, tmp_path, bob, "proxy_uas_hangup")
    result = call(cluster, tmp_path, "proxy_uac_auth_wait_bye", bob)
    assert result.ok, result.explain()
    assert finished(phone) == [0]


def test_re_invite_in_the_dialog(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    phone = device(cluster, tmp_path, bob, "proxy_uas_reinvite")
    result = call(cluster, tmp_path, "proxy_uac_auth_reinvite", bob)
    assert result.ok, result.explain()
    assert finished(phone) == [0]


def test_two_devices_one_answers_the_other_is_cancelled(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    desk = device(cluster, tmp_path, bob, "proxy_uas_answer")
    mobile = device(cluster, tmp_path, bob, "proxy_uas_ring_cancel")
    assert len(cluster.bindings(bob, DOMAIN)) == 2
    result = call(cluster, tmp_path, "proxy_uac_auth_call", bob)
    assert result.ok, result.explain()
    assert finished(desk, mobile) == [0, 0]  # the mobile got CANCEL, answered 487, got ACK


def test_one_busy_one_ringing_the_call_is_answered(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    busy = device(cluster, tmp_path, bob, "proxy_uas_busy")
    free = device(cluster, tmp_path, bob, "proxy_uas_answer")
    result = call(cluster, tmp_path, "proxy_uac_auth_call", bob)
    assert result.ok, result.explain()
    assert finished(busy, free) == [0, 0]


def test_caller_cancels_while_it_rings(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    phone = device(cluster, tmp_path, bob, "proxy_uas_ring_cancel")
    result = call(cluster, tmp_path, "proxy_uac_auth_cancel", bob)
    assert result.ok, result.explain()
    assert finished(phone) == [0]


def test_no_answer_ends_with_408_after_timer_c(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    phone = device(cluster, tmp_path, bob, "proxy_uas_ring_cancel")
    result = call(cluster, tmp_path, "proxy_uac_auth_refused", bob)
    assert result.ok, result.explain()
    assert finals(result)[-1] == 408
    assert finished(phone) == [0]  # the proxy cancelled the ringing phone


def test_unknown_callee_is_404(cluster: Cluster, tmp_path: Path) -> None:
    result = call(cluster, tmp_path, "proxy_uac_auth_refused", "nobody")
    assert result.ok, result.explain()
    assert finals(result)[-1] == 404


def test_unregistered_callee_is_480(cluster: Cluster, tmp_path: Path) -> None:
    result = call(cluster, tmp_path, "proxy_uac_auth_refused", "carol")
    assert result.ok, result.explain()
    assert finals(result)[-1] == 480


def test_wrong_password_is_challenged_again(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    result = call(cluster, tmp_path, "proxy_uac_auth_refused", bob, password="wrong")
    assert result.ok, result.explain()
    assert finals(result) == [407, 407]


def test_missing_credentials_get_a_challenge(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    result = call(cluster, tmp_path, "proxy_uac_no_credentials", bob)
    assert result.ok, result.explain()
    assert 'Proxy-Authenticate: Digest realm="example.com"' in result.messages


def test_message_reaches_the_registered_device(cluster: Cluster, tmp_path: Path) -> None:
    bob = new_callee(cluster)
    phone = device(cluster, tmp_path, bob, "proxy_uas_message")
    result = call(cluster, tmp_path, "proxy_uac_auth_message", bob)
    assert result.ok, result.explain()
    assert finished(phone) == [0]
