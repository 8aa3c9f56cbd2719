"""Abuse at the edge, tried as an attacker would, with Debian's sipvicious, on `sipfleet
up` as the README starts it (in a namespace of its own). Sources are distinct loopback
addresses of that namespace (127.0.0.0/8 is all local): the attacker 127.0.0.66, the
real users 127.0.0.10 and up.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop.lab import Embedded, embedded_cluster, why_no_lab

pytestmark = pytest.mark.skipif(
    why_no_lab() is not None or shutil.which("svcrack") is None or shutil.which("sipp") is None,
    reason=str(why_no_lab() or "sipvicious or sipp is not installed (scripts/setup.sh --test)"),
)

DOMAIN = "127.0.0.1"  # what svcrack and svwar put in their URIs by default
PASSWORD = "Tr0ub4dor-and-3"
ATTACKER = "127.0.0.66"
SIPP_SCENARIO = Path(__file__).parents[2] / "bench" / "sipp" / "reg_auth_uac.xml"
NO_SCANNER_FILTER = "[edge]\nscanner_filter = false\n"


@contextmanager
def started(tmp_path: Path, config_text: str) -> Iterator[Embedded]:
    config = tmp_path / "edge.toml"
    config.write_text(config_text)
    with embedded_cluster(tmp_path, "abuse", up_args=("-c", str(config))) as up:
        for user in ("alice", "105", "110"):
            added = up.sipfleet("subscriber", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)
            assert added.returncode == 0, added.stdout + added.stderr
        yield up


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Embedded]:
    """The scanner filter off, so sipvicious meets the deeper defences."""
    with started(tmp_path, NO_SCANNER_FILTER) as up:
        yield up


@pytest.fixture
def default_cluster(tmp_path: Path) -> Iterator[Embedded]:
    with started(tmp_path, "") as up:
        yield up


def run_in(up: Embedded, argv: list[str], timeout: float) -> str:
    done = subprocess.run(
        up.ns.argv(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.stdout + done.stderr


def register(up: Embedded, workdir: Path, users: list[str], source: str, rate: int) -> int:
    """REGISTERs with digest by sipp from ``source``, one per user; how many got 200."""
    csv = workdir / f"users-{source}.csv"
    lines = [f"{u};[authentication username={u} password={PASSWORD}]" for u in users]
    csv.write_text("SEQUENTIAL\n" + "\n".join(lines) + "\n")
    stat = workdir / f"sipp-{source}.csv"
    argv = [
        "sipp", f"{DOMAIN}:{up.lb_port}", "-sf", str(SIPP_SCENARIO), "-inf", str(csv),
        "-i", source, "-p", "0", "-r", str(rate), "-m", str(len(users)), "-l", "50",
        "-timeout", "60s", "-recv_timeout", "8000", "-trace_stat", "-stf", str(stat),
        "-nostdin", "-default_behaviors", "all,-bye",  # a refused phone sends no BYE
    ]  # fmt: skip
    run_in(up, argv, timeout=90)
    last = stat.read_text().strip().splitlines()[-1].split(";")
    header = stat.read_text().strip().splitlines()[0].split(";")
    return int(last[header.index("SuccessfulCall(C)")])


def test_svcrack_does_not_find_the_password(cluster: Embedded, tmp_path: Path) -> None:
    words = [f"guess{index}" for index in range(200)]
    words[189] = PASSWORD  # late in the dictionary, as in the run
    dictionary = tmp_path / "words.txt"
    dictionary.write_text("\n".join(words) + "\n")
    argv = ["svcrack", "-u", "alice", "-d", str(dictionary), "-b", ATTACKER]
    output = run_in(cluster, [*argv, "-p", str(cluster.lb_port), DOMAIN], timeout=120)
    assert "Could not find the password" in output or PASSWORD not in output, output
    assert PASSWORD not in output
    log = cluster.log_text()
    # (svcrack sends from 127.0.0.1 whatever -b says: the attacker's pair is that one)
    assert "reason=auth-lockout user=alice seconds=30" in log, log[-3000:]
    # alice, from her own address, registers while the attacker's pair is locked
    assert register(cluster, tmp_path, ["alice"], "127.0.0.10", rate=1) == 1


def test_svwar_finds_no_user(cluster: Embedded) -> None:
    for method in ("REGISTER", "INVITE", "OPTIONS"):
        argv = ["svwar", "-e", "100-120", "-m", method, "-b", ATTACKER, "--force"]
        output = run_in(cluster, [*argv, "-p", str(cluster.lb_port), DOMAIN], timeout=120)
        for user in ("105", "110"):
            assert f"| {user} " not in output, f"{method}:\n{output}"


def test_the_scanner_filter_drops_sipvicious(default_cluster: Embedded) -> None:
    cluster = default_cluster
    argv = ["svmap", "-b", ATTACKER, "-p", str(cluster.lb_port), DOMAIN]
    output = run_in(cluster, argv, timeout=60)
    assert "friendly-scanner" not in output, output
    assert "sipfleet" not in output.lower(), output
    assert "reason=scanner" in cluster.log_text()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def role_pids(up: Embedded) -> dict[str, int]:
    """The PIDs of the LB and the registrar `sipfleet up` started (by their command line)."""
    found: dict[str, int] = {}
    for pid in up.ns.pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for role in ("lb", "registrar"):
            if b"run" in command and role.encode() in command:
                found.setdefault(role, pid)
    return found


FLOOD = """
import socket, sys, time
source, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((source, 0))
s.setblocking(False)
local = s.getsockname()[1]
deadline = time.monotonic() + seconds
sent = 0
while sent < count and time.monotonic() < deadline:
    data = (
        f"REGISTER sip:127.0.0.1 SIP/2.0\\r\\n"
        f"Via: SIP/2.0/UDP {source}:{local};branch=z9hG4bK{sent}\\r\\n"
        f"Max-Forwards: 70\\r\\nFrom: <sip:flood{sent}@127.0.0.1>;tag={sent}\\r\\n"
        f"To: <sip:flood{sent}@127.0.0.1>\\r\\nCall-ID: flood{sent}\\r\\nCSeq: 1 REGISTER\\r\\n"
        f"Contact: <sip:flood@{source}:{local}>\\r\\nContent-Length: 0\\r\\n\\r\\n"
    ).encode()
    try:
        s.sendto(data, ("127.0.0.1", port))
        sent += 1
    except BlockingIOError:
        time.sleep(0.0005)
    try:
        while True:
            s.recv(65535)
    except BlockingIOError:
        pass
print(sent)
"""


def test_a_register_flood_from_one_source_leaves_others_registering(
    cluster: Embedded, tmp_path: Path
) -> None:
    pids = role_pids(cluster)
    assert set(pids) == {"lb", "registrar"}, pids
    before = {role: rss_kb(pid) for role, pid in pids.items()}
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    flood = subprocess.Popen(
        cluster.ns.argv(["python3", str(script), ATTACKER, str(cluster.lb_port), "400000", "30"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the flood is under way before the users start
        assert flood.poll() is None
        users = ["alice", "105", "110"] * 20
        ok = register(cluster, tmp_path, users, "127.0.0.10", rate=10)
    finally:
        flood.terminate()
        sent = flood.communicate(timeout=30)[0].strip()
    after = {role: rss_kb(pid) for role, pid in pids.items()}
    print(f"flood: {sent} REGISTERs sent; users: {ok}/{len(users)}; RSS kB {before} -> {after}")
    assert ok >= 0.95 * len(users), (ok, sent)
    for role in pids:
        assert after[role] - before[role] < 50_000, (role, before, after)
    assert f"blocked: source={ATTACKER} reason=rate" in cluster.log_text()
