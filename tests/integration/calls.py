"""Calls through a running cluster, seen from both ends: sipp callers and callees started
in the background and stopped by PID, what each saw read back from its message trace
(-trace_msg), and the helpers of a test that stops a proxy mid-call."""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipfleet.cli import main
from sipfleet.sip import Message, Request, Response, parse_message
from sipfleet.sip.privacy import ANONYMOUS_URI
from tests.integration.harness import Cluster, RoleProcess, free_port
from tests.integration.sipp import register_scenario, run_sipp, start_sipp, stop_sipp

DOMAIN = "example.com"
PASSWORD = "secret"
ANONYMOUS = f'"Anonymous" <{ANONYMOUS_URI}>'
_callees = itertools.count(1)


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def pool_proxy(port: int, **extra: object) -> dict[str, object]:
    """A proxy of the LB's pool on ``port``; it learns its siblings from the pool."""
    listen = [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"]
    return {"listen": listen, "pool_reload_s": 0.5, **extra}


LB_SETTINGS = {"probe_interval_s": 1.0, "pool_reload_s": 0.5, "keepalive": False}


def start_pool(cluster: Cluster, **proxy: object) -> None:
    """A registrar, two proxies of one pool (proxy1, proxy2, each with ``proxy`` settings)
    and an LB in front of them, alice a subscriber."""
    cluster.add_subscriber("alice", DOMAIN, PASSWORD)
    cluster.add_lb_target("registrar", cluster.start("registrar"))
    for name, port in zip(("proxy1", "proxy2"), distinct_free_ports(2), strict=True):
        node = cluster.start("proxy", name=name, proxy=pool_proxy(port, **proxy))
        cluster.add_lb_target("proxy", node)
    cluster.start("lb", lb=LB_SETTINGS)


def lb(cluster: Cluster) -> str:
    return f"127.0.0.1:{cluster.roles['lb'].port}"


# -- what each side saw --------------------------------------------------------------------------
@dataclass
class Seen:
    sent: bool
    text: str  # the message as it was on the wire
    message: Message

    def lines(self, name: str) -> list[str]:
        """Every header line of that name, exactly as on the wire."""
        prefix = f"{name.lower()}:"
        return [line for line in self.text.split("\r\n") if line.lower().startswith(prefix)]

    def line(self, name: str) -> str:
        found = self.lines(name)
        assert len(found) == 1, (name, self.text)
        return found[0]

    def value(self, name: str) -> str:
        return self.line(name).split(":", 1)[1].strip()

    def is_anonymous(self, name: str) -> bool:
        return self.value(name).startswith(f"{ANONYMOUS};tag=")

    @property
    def request(self) -> Request:
        assert isinstance(self.message, Request), self.text
        return self.message

    @property
    def status(self) -> int:
        assert isinstance(self.message, Response), self.text
        return self.message.status

    def is_request(self, method: str) -> bool:
        return isinstance(self.message, Request) and self.message.method == method


_BLOCK = re.compile(
    r"^(?:UDP|TCP) message (sent|received) (?:\[(\d+)\] bytes|\((\d+) bytes\))", re.M
)


def trace(path: Path) -> list[Seen]:
    """Every message in a sipp -trace_msg file, in order."""
    data = path.read_bytes().decode("latin-1") if path.exists() else ""
    seen = []
    for found in _BLOCK.finditer(data):
        start = data.index("\n\n", found.end()) + 2
        text = data[start : start + int(found.group(2) or found.group(3))]
        seen.append(Seen(found.group(1) == "sent", text, parse_message(text.encode("latin-1"))))
    return seen


def received(path: Path) -> list[Seen]:
    return [each for each in trace(path) if not each.sent]


def requests_of(seen: list[Seen]) -> list[str]:
    """The methods of the requests received, a retransmission counted once."""
    found: dict[tuple[str, int, str], None] = {}
    for each in seen:
        if isinstance(each.message, Request):
            message = each.message
            found[(message.method, message.cseq.seq, message.top_via.branch or "")] = None
    return [method for method, _, _ in found]


def responses(seen: list[Seen]) -> list[Seen]:
    return [each for each in seen if isinstance(each.message, Response)]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


# -- the two sides -------------------------------------------------------------------------------
@dataclass
class Callee:
    user: str
    process: subprocess.Popen[bytes]
    trace: Path


@dataclass
class Caller:
    process: subprocess.Popen[bytes]
    port: int
    trace: Path


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_sipp_left() -> Iterator[None]:  # imported by the test modules that start sipps
    """A test that fails half-way leaves no sipp running (stopped by PID)."""
    yield
    while _started:
        stop_sipp(_started.pop(), wait=0.1)


def callee(cluster: Cluster, workdir: Path, scenario: str) -> Callee:
    """A new user registered through the LB, then a sipp UAS on its port."""
    user = f"bob{next(_callees)}"
    port = free_port()
    register = register_scenario(workdir, user=user, authenticate=False, name=f"reg-{user}")
    result = run_sipp(register, lb(cluster), workdir, local_port=port)
    assert result.ok, result.explain()
    process = start_sipp(scenario, workdir, local_port=port, timeout=30)
    _started.append(process)
    return Callee(user, process, workdir / f"{scenario}-{port}.msg")


def caller(cluster: Cluster, workdir: Path, scenario: str, to: Callee, privacy: str) -> Caller:
    """alice, authenticated, calling ``to`` through the LB (sipp in the background)."""
    fields = workdir / f"call-{to.user}.csv"
    fields.write_text(f"SEQUENTIAL\n{to.user};{DOMAIN};alice\n")
    port = free_port()
    process = start_sipp(
        scenario,
        workdir,
        local_port=port,
        target=lb(cluster),
        keys={"privacy": privacy},
        timeout=30,
        extra=["-inf", str(fields), "-au", "alice", "-ap", PASSWORD],
    )
    _started.append(process)
    return Caller(process, port, workdir / f"{scenario}-{port}.msg")


def both_finish(one: Caller, other: Callee) -> None:
    codes = stop_sipp(one.process, wait=30), stop_sipp(other.process, wait=10)
    assert codes == (0, 0), (codes, one.trace.read_text()[-4000:], other.trace.read_text()[-3000:])


# -- helpers of the failover test ----------------------------------------------------------------
def uri(node: RoleProcess) -> str:
    return f"sip:127.0.0.1:{node.port}"


def health(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`sipfleet lb target list --json`: the LB's view of each target."""
    capsys.readouterr()
    assert main(["lb", "target", "list", "--json", "--db", cluster.dsn]) == 0
    records = json.loads(capsys.readouterr().out)
    return {r["uri"]: r["health"].get("lb", {}).get("health", "none") for r in records}


def go(port: int, call_id: str) -> None:
    """The caller's scenario waits for a MESSAGE of its call before going on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        here = sock.getsockname()[1]
        lines = [
            f"MESSAGE sip:alice@127.0.0.1:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{here};branch=z9hG4bK-go-{here}",
            "Max-Forwards: 70",
            "From: <sip:test@127.0.0.1>;tag=go",
            "To: <sip:alice@127.0.0.1>",
            f"Call-ID: {call_id}",
            "CSeq: 1 MESSAGE",
            "Content-Length: 0",
        ]
        sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), ("127.0.0.1", port))
