"""NAT keepalives through a real NAT (network namespaces: tests/interop/natlab.py).

The registrar, the proxy and two LBs run in the "server" namespace (LBs on the public
203.0.113.10, registrar and proxy on that namespace's loopback). Two phones (sipp) sit
behind a NAT whose UDP mappings die after UDP_TIMEOUT seconds; each registers through its
own LB: one LB sends keepalives, the other has them switched off. After three NAT
timeouts a caller calls both: the phone behind the keepalive LB rings; the other never
sees the INVITE, because its NAT mapping is gone. So the test proves the keepalives,
not luck.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, running_cluster
from tests.integration.sipp import SCENARIOS, register_scenario, sipp_binary
from tests.interop.natlab import PHONE_IP, SERVER_IP, nat_lab, why_no_natlab

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slow]

UDP_TIMEOUT = 5  # seconds the NAT keeps an idle UDP mapping
KEEPALIVE_S = 2.0
DOMAIN = "example.com"
PASSWORD = "secret"


@dataclass
class Lab:
    phone_ns: str
    server_ns: str


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    why = why_no_natlab()
    if why is not None:
        pytest.skip(why)
    with nat_lab("lbnat", UDP_TIMEOUT) as natlab:
        yield Lab(natlab.phone.name, natlab.server.name)


def sipp_in(
    netns: str,
    address: str,
    scenario: Path,
    target: str,
    workdir: Path,
    *,
    local_port: int,
    timeout: int,
    calls: int = 1,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """sipp inside ``netns``, bound to ``address``; bounded in calls and time."""
    name = f"{scenario.stem}-{local_port}"
    command = [
        "ip", "netns", "exec", netns, sipp_binary(), *([target] if target else []),
        "-sf", str(scenario), "-i", address, "-p", str(local_port), "-m", str(calls),
        "-timeout", f"{timeout}s", "-timeout_error", "-nostdin",
        "-trace_msg", "-message_file", str(workdir / f"{name}.msg"),
        "-trace_err", "-error_file", str(workdir / f"{name}.err"), *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=5)


def messages(workdir: Path, scenario: str, port: int) -> str:
    path = workdir / f"{scenario}-{port}.msg"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("nat")
    with running_cluster(workdir, overrides={"registrar": {"authenticate": False}}) as cluster:
        cluster.add_subscriber("alice", DOMAIN, PASSWORD)
        ns = lab.server_ns
        cluster.add_lb_target("registrar", cluster.start("registrar", netns=ns))
        cluster.add_lb_target("proxy", cluster.start("proxy", netns=ns))
        for name, port, keepalive in (("lb-on", 5060, True), ("lb-off", 5062, False)):
            settings = {
                "listen": [f"udp:{SERVER_IP}:{port}", f"tcp:{SERVER_IP}:{port}"],
                "internal_listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
                "keepalive": keepalive,
                "keepalive_interval_s": KEEPALIVE_S,
                "probe_interval_s": 1.0,
            }
            cluster.start("lb", name=name, netns=ns, lb=settings)
        yield cluster


def test_keepalives_keep_a_natted_phone_reachable(
    lab: Lab, cluster: Cluster, tmp_path: Path
) -> None:
    phones = {}
    for user, lb_port, phone_port in (("bob", 5060, 5070), ("dora", 5062, 5072)):
        scenario = register_scenario(tmp_path, user=user, authenticate=False, name=f"reg-{user}")
        register = sipp_in(
            lab.phone_ns, PHONE_IP, scenario, f"{SERVER_IP}:{lb_port}", tmp_path,
            local_port=phone_port, timeout=10,
        )  # fmt: skip
        assert finished(register, 20) == 0, messages(tmp_path, f"reg-{user}", phone_port)
        (binding,) = cluster.bindings(user, DOMAIN)
        assert binding.path is not None
        assert f"@127.0.0.1:{lb_port};lr" in binding.path
        # -aa answers the LB's keepalive OPTIONS (sipp counts each as a call: hence -m 100)
        phones[user] = sipp_in(
            lab.phone_ns, PHONE_IP, SCENARIOS / "proxy_uas_answer.xml", "", tmp_path,
            local_port=phone_port, timeout=3 * UDP_TIMEOUT + 30, calls=100, extra=("-aa",),
        )  # fmt: skip

    time.sleep(3 * UDP_TIMEOUT + 1)  # without keepalives every mapping is gone by now

    outcome = {}
    for user in ("bob", "dora"):
        fields = tmp_path / f"call-{user}.csv"
        fields.write_text(f"SEQUENTIAL\n{user};{DOMAIN};alice\n")
        caller = sipp_in(
            lab.server_ns, SERVER_IP, SCENARIOS / "proxy_uac_auth_call.xml", f"{SERVER_IP}:5060",
            tmp_path, local_port=6000 + len(user), timeout=8,
            extra=("-inf", str(fields), "-au", "alice", "-ap", PASSWORD),
        )  # fmt: skip
        outcome[user] = finished(caller, 20)
    for phone in phones.values():
        finished(phone, 0.1)

    bob_saw = messages(tmp_path, "proxy_uas_answer", 5070)
    assert "INVITE sip:" in bob_saw, bob_saw[-3000:]  # it rang
    assert outcome["bob"] == 0, messages(tmp_path, "proxy_uac_auth_call", 6003)[-3000:]
    assert "OPTIONS sip:" in bob_saw  # the LB's keepalives reached it through the NAT
    dora_saw = messages(tmp_path, "proxy_uas_answer", 5072)
    assert "INVITE sip:" not in dora_saw  # no keepalives: the NAT dropped the call
    assert "OPTIONS sip:" not in dora_saw
    assert outcome["dora"] != 0
