"""The lab of two LBs, active-active: a core host, two LB hosts and a phone host, each a
network namespace made (and deleted) here, on one bridge::

    core   10.20.0.2   registrar :5070, proxy :5080 (SQLite on the test's disk)
    lb1    10.20.0.11  clients :5060 (UDP, TCP), cluster :5090, lb.id 1
    lb2    10.20.0.12  clients :5060 (UDP, TCP), cluster :5090, lb.id 2
    phones 10.20.0.20  alice: baresip, two outbound proxies (RFC 5626 flows): UDP via
                       lb1, TCP via lb2
           10.20.0.21  bob: baresip through lb1, UDP
           10.20.0.22  carol: baresip, two outbound proxies over UDP (one Contact)

Every role is ``sipfleet run ROLE -c FILE`` (``tests.integration.harness.Cluster`` writes
the files); both LBs have the same cluster secret and the same pools; the registrar and
the proxy trust both. What the phone host receives can be watched with ``crlf_pings``
(a packet socket in its namespace), so the keepalives are counted where they arrive.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.harness import Cluster
from tests.interop.agents.baresip import Baresip
from tests.interop.lab import Namespace

CORE_IP = "10.20.0.2"
LB_IPS = {"lb1": "10.20.0.11", "lb2": "10.20.0.12"}
ALICE_IP, BOB_IP, CAROL_IP = "10.20.0.20", "10.20.0.21", "10.20.0.22"
REGISTRAR_PORT, PROXY_PORT = 5070, 5080
CLIENT_PORT, CLUSTER_PORT = 5060, 5090
DOMAIN = "example.com"
PASSWORD = "secret"
PATH_HOST = re.compile(r"@([0-9.]+):")


@dataclass
class TwoLbLab:
    core: Namespace
    lbs: dict[str, Namespace]  # by node name: lb1, lb2
    phones: Namespace
    cluster: Cluster

    def lb_of(self, path: str | None) -> str:
        """The LB whose address a Path (or Record-Route) names."""
        found = PATH_HOST.search(path or "")
        ip = found.group(1) if found else ""
        (name,) = [name for name, address in LB_IPS.items() if address == ip]
        return name


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stdout}{done.stderr}")


@contextmanager
def bridged_hosts(hint: str, addresses: dict[str, list[str]]) -> Iterator[dict[str, Namespace]]:
    """One namespace per host, each with ``eth0`` on a bridge in a hub namespace and the
    given /24 addresses; all deleted afterwards."""
    with ExitStack() as stack:
        hub = stack.enter_context(Namespace(f"{hint}hub"))
        _run(["ip", "-n", hub.name, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", hub.name, "link", "set", "br0", "up"])
        hosts: dict[str, Namespace] = {}
        for n, (host, ips) in enumerate(addresses.items()):
            ns = stack.enter_context(Namespace(f"{hint}{host}"))
            port = f"p{n}"  # the host's end of the cable in the hub
            _run(["ip", "-n", ns.name, "link", "add", "eth0", "type", "veth",
                  "peer", "name", port, "netns", hub.name])  # fmt: skip
            _run(["ip", "-n", hub.name, "link", "set", port, "master", "br0", "up"])
            for ip in ips:
                _run(["ip", "-n", ns.name, "addr", "add", f"{ip}/24", "dev", "eth0"])
            _run(["ip", "-n", ns.name, "link", "set", "eth0", "up"])
            hosts[host] = ns
        yield hosts


def lb_settings(name: str, keepalive_interval_s: float) -> dict[str, Any]:
    ip = LB_IPS[name]
    return {
        "node": {"name": name},
        "lb": {
            "listen": [f"udp:{ip}:{CLIENT_PORT}", f"tcp:{ip}:{CLIENT_PORT}"],
            "internal_listen": [f"udp:{ip}:{CLUSTER_PORT}", f"tcp:{ip}:{CLUSTER_PORT}"],
            "id": int(name.removeprefix("lb")),
            "keepalive_interval_s": keepalive_interval_s,
            "keepalive_method": "crlf",  # over UDP too: one kind of ping to count
            "probe_interval_s": 1.0,
        },
    }


@contextmanager
def two_lb_lab(
    workdir: Path, *, keepalive_interval_s: float, flow_timeout_s: float
) -> Iterator[TwoLbLab]:
    """The hosts, the core's registrar and proxy, both LBs and the subscribers alice, bob
    and carol; every process stopped by PID and every namespace deleted afterwards."""
    addresses = {
        "core": [CORE_IP],
        **{name: [ip] for name, ip in LB_IPS.items()},
        "phones": [ALICE_IP, BOB_IP, CAROL_IP],
    }
    trusted = list(LB_IPS.values())
    with bridged_hosts("2lb", addresses) as hosts, ExitStack() as stack:
        cluster = Cluster(workdir)
        stack.callback(cluster.stop)
        for user in ("alice", "bob", "carol"):
            cluster.add_subscriber(user, DOMAIN, PASSWORD)
        core = hosts["core"].name
        cluster.start(
            "registrar",
            netns=core,
            registrar={"listen": _both(CORE_IP, REGISTRAR_PORT), "trusted_lbs": trusted},
        )
        cluster.start(
            "proxy",
            netns=core,
            proxy={
                "listen": _both(CORE_IP, PROXY_PORT),
                "trusted_lbs": trusted,
                "flow_timeout_s": flow_timeout_s,
            },
        )
        cluster.add_lb_target("registrar", f"sip:{CORE_IP}:{REGISTRAR_PORT}")
        cluster.add_lb_target("proxy", f"sip:{CORE_IP}:{PROXY_PORT}")
        for name in LB_IPS:
            cluster.start(
                "lb", name, netns=hosts[name].name, **lb_settings(name, keepalive_interval_s)
            )
        lbs = {name: hosts[name] for name in LB_IPS}
        yield TwoLbLab(hosts["core"], lbs, hosts["phones"], cluster)


def _both(ip: str, port: int) -> list[str]:
    return [f"udp:{ip}:{port}", f"tcp:{ip}:{port}"]


class OutboundBaresip(Baresip):
    """baresip 1.0.0 as an RFC 5626 phone: one account, ``outbound1`` and ``outbound2``
    (one registration each, reg-id 1 and 2, each to its own LB), ``sipnat=outbound``
    (``+sip.instance`` from the uuid module, ``Supported: outbound``, and keepalives of
    its own once the registrar answers ``Require: outbound``: STUN over UDP, CRLF over
    TCP).

    libre writes the same Contact for both registrations of one transport (its listening
    address): the location table keeps them as two bindings, keyed by instance and
    reg-id (RFC 5626 §6)."""

    def __init__(self, *args: Any, outbounds: tuple[str, str], **kwargs: Any) -> None:
        """``outbounds``: two SIP URIs (with ``;transport=``), reg-id 1 and 2."""
        super().__init__(*args, **kwargs)
        self.outbounds = outbounds

    def write_config(self) -> None:
        super().write_config()
        with (self.dir / "config").open("a") as config:
            config.write("module_tmp uuid.so\n")  # writes <dir>/uuid once: the instance
        first, second = self.outbounds
        (self.dir / "accounts").write_text(
            f"<{self.aor}>;auth_pass={self.password};"
            f'outbound1="{first}";outbound2="{second}";sipnat=outbound;'
            f"regint={self.regint};answermode=manual\n"
        )

    def wait_flow_registered(self, reg_id: int, timeout: float | None = None) -> str:
        """The registrar's 200 for the registration of ``reg_id`` ("{1/UDP/v4} 200 OK")."""
        return self.expect(rf"{re.escape(self.user)}@\S+: \{{{reg_id}/\w+/v4\}} 200 OK", timeout)

    def was_sent(self, source: str, destination: str) -> bool:
        """Two proxies: what left this phone's address is what it sent."""
        return source.startswith(f"{self.local_ip}:")


# Counts the UDP datagrams and TCP segments carrying exactly CRLFCRLF (a keepalive ping)
# that arrive at one address, by (source address, destination port), for a while.
CRLF_COUNTER = r"""
import json, socket, struct, sys, time
address, seconds = sys.argv[1], float(sys.argv[2])
sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
sniffer.bind(("eth0", 0))
sniffer.settimeout(0.2)
counts = {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        packet = sniffer.recv(65535)
    except TimeoutError:
        continue
    header = (packet[0] & 15) * 4
    if packet[9] not in (6, 17) or socket.inet_ntoa(packet[16:20]) != address:
        continue
    total = struct.unpack("!H", packet[2:4])[0]
    segment = packet[header:total]
    payload = segment[(segment[12] >> 4) * 4 :] if packet[9] == 6 else segment[8:]
    if payload == b"\r\n\r\n":
        key = f"{socket.inet_ntoa(packet[12:16])} {struct.unpack('!H', segment[2:4])[0]}"
        counts[key] = counts.get(key, 0) + 1
print(json.dumps(counts))
"""


def crlf_pings(ns: Namespace, address: str, seconds: float) -> dict[tuple[str, int], int]:
    """The CRLFCRLF pings ``address`` received in ``seconds``, by (sender, its port there)."""
    done = ns.run([sys.executable, "-c", CRLF_COUNTER, address, str(seconds)], timeout=seconds + 20)
    if done.returncode != 0:
        raise RuntimeError(f"the CRLF counter failed: {done.stderr}")
    counted: dict[str, int] = json.loads(done.stdout)
    return {(key.split()[0], int(key.split()[1])): n for key, n in counted.items()}


# An OPTIONS from the core host to an LB's cluster side, its Route the given Path URI;
# prints the answer's status line.
OPTIONS_DOWN_A_FLOW = r"""
import socket, sys
source, lb, port, route = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((source, 0))
s.settimeout(5)
local = s.getsockname()[1]
message = (
    f"OPTIONS sip:alice@{source} SIP/2.0\r\n"
    f"Via: SIP/2.0/UDP {source}:{local};branch=z9hG4bK-foreign-flow\r\n"
    f"Route: {route}\r\nMax-Forwards: 70\r\n"
    f"From: <sip:probe@example.com>;tag=probe\r\nTo: <sip:alice@example.com>\r\n"
    f"Call-ID: foreign-flow@{source}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
s.sendto(message.encode(), (lb, port))
print(s.recv(65535).decode(errors="replace").split("\r\n", 1)[0])
"""


@contextmanager
def connections_held(ns: Namespace, to_ip: str, port: int) -> Iterator[None]:
    """TCP connections from ``ns`` to ``to_ip:port`` cannot open meanwhile (their SYNs are
    dropped; the kernel sends them again 1 s, 3 s, ... after the first)."""
    rules = f"""
table ip twolbhold {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {to_ip} tcp dport {port} tcp flags & (syn | ack) == syn drop
    }}
}}
"""
    _run(ns.argv(["nft", "-f", "-"]), rules)
    try:
        yield
    finally:
        _run(ns.argv(["nft", "delete", "table", "ip", "twolbhold"]))


def options_down_flow(lab: TwoLbLab, lb: str, route: str) -> str:
    """The status line an LB answers to a node's request along ``route`` (a Path)."""
    argv = [
        sys.executable,
        "-c",
        OPTIONS_DOWN_A_FLOW,
        CORE_IP,
        LB_IPS[lb],
        str(CLUSTER_PORT),
        route,
    ]
    done = lab.core.run(argv)
    if done.returncode != 0:
        raise RuntimeError(f"no answer from {lb}: {done.stderr}")
    return str(done.stdout).strip()
