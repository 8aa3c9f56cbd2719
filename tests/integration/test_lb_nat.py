"""NAT keepalives through a real NAT (network namespaces, ../shared/tools/netns-nat-lab.sh).

The registrar, the proxy and two LBs run in the "server" namespace (LBs on the public
203.0.113.10, registrar and proxy on that namespace's loopback). Two phones (sipp) sit
behind a NAT whose UDP mappings die after UDP_TIMEOUT seconds; each registers through its
own LB: one LB sends keepalives, the other has them switched off. After three NAT
timeouts a caller calls both: the phone behind the keepalive LB rings; the other never
sees the INVITE, because its NAT mapping is gone. So the test proves the keepalives,
not luck.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, running_cluster
from tests.integration.sipp import SCENARIOS, register_scenario, sipp_binary

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slow]

LAB = Path(__file__).resolve().parents[3] / "shared" / "tools" / "netns-nat-lab.sh"
UDP_TIMEOUT = 5  # seconds the NAT keeps an idle UDP mapping
KEEPALIVE_S = 2.0
PHONE_IP, SERVER_IP = "10.0.1.2", "203.0.113.10"
DOMAIN = "example.com"
PASSWORD = "secret"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not LAB.exists():
        return f"{LAB} is missing"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@dataclass
class Lab:
    phone_ns: str
    server_ns: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    why = _why_not()
    if why is not None:
        pytest.skip(why)
    suffix = secrets.token_hex(3)
    names = {"NS_UAC": f"sfu{suffix}", "NS_NAT": f"sfn{suffix}", "NS_SRV": f"sfs{suffix}"}
    env = {**os.environ, **names, "UDP_TIMEOUT": str(UDP_TIMEOUT), "WITH_UAC2": "0"}
    up = subprocess.run(["bash", str(LAB), "up"], env=env, capture_output=True, timeout=30)
    try:
        assert up.returncode == 0, up.stderr.decode()
        yield Lab(names["NS_UAC"], names["NS_SRV"], env)
    finally:
        subprocess.run(["bash", str(LAB), "down"], env=env, capture_output=True, timeout=30)


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
