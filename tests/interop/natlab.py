"""A NAT lab of our own: phones behind a masquerading NAT, a server on a public address.

Three network namespaces, all made (and deleted) here; the addresses are documentation
and private ranges that exist only inside them::

    phone  10.0.1.2/24 --- 10.0.1.1 [ nat: masquerade ] 203.0.113.1 --- 203.0.113.10/24  server

The server namespace has no route to 10.0.1.0/24: a phone's packets reach it only as
the NAT rewrote them (from 203.0.113.1, the NAT's port), and a packet to the phone gets
through only while the NAT still holds that mapping. The NAT forgets an idle UDP mapping
after ``udp_timeout`` seconds (conntrack's UDP timeouts, set in the NAT namespace only).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.interop.lab import Embedded, Namespace, embedded_cluster, why_no_lab

A = TypeVar("A")

PHONE_IP = "10.0.1.2"
NAT_INSIDE_IP = "10.0.1.1"
NAT_PUBLIC_IP = "203.0.113.1"
SERVER_IP = "203.0.113.10"

NAT_RULES = """
table ip sipfleet_natlab {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub0" masquerade
    }
}
"""


@dataclass
class NatLab:
    phone: Namespace  # PHONE_IP, default route through the NAT
    nat: Namespace
    server: Namespace  # SERVER_IP
    udp_timeout: int  # seconds the NAT keeps an idle UDP mapping


def why_no_natlab() -> str | None:
    why = why_no_lab()
    if why is not None:
        return why
    for tool in ("nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh --test)"
    return None


def _check(ns: Namespace, argv: list[str], stdin: str | None = None) -> None:
    done = ns.run(argv, input=stdin)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns.name}: {done.stdout}{done.stderr}")


@contextmanager
def nat_lab(name_hint: str, udp_timeout: int) -> Iterator[NatLab]:
    """The three namespaces, wired and routed; all deleted afterwards."""
    with ExitStack() as stack:
        phone = stack.enter_context(Namespace(f"{name_hint}p"))
        nat = stack.enter_context(Namespace(f"{name_hint}n"))
        server = stack.enter_context(Namespace(f"{name_hint}s"))
        # veth pairs made directly inside the namespaces: no name ever exists on the host
        for argv in (
            ["ip", "-n", phone.name, "link", "add", "eth0", "type", "veth",
             "peer", "name", "lan0", "netns", nat.name],
            ["ip", "-n", nat.name, "link", "add", "pub0", "type", "veth",
             "peer", "name", "eth0", "netns", server.name],
        ):  # fmt: skip
            subprocess.run(argv, check=True, timeout=10, capture_output=True)
        for ns, device, address in (
            (phone, "eth0", f"{PHONE_IP}/24"),
            (nat, "lan0", f"{NAT_INSIDE_IP}/24"),
            (nat, "pub0", f"{NAT_PUBLIC_IP}/24"),
            (server, "eth0", f"{SERVER_IP}/24"),
        ):
            _check(ns, ["ip", "addr", "add", address, "dev", device])
            _check(ns, ["ip", "link", "set", device, "up"])
        _check(phone, ["ip", "route", "add", "default", "via", NAT_INSIDE_IP])
        _check(nat, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        _check(nat, ["nft", "-f", "-"], stdin=NAT_RULES)  # loads conntrack in the namespace
        for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
            _check(nat, ["sysctl", "-q", "-w", f"net.netfilter.{key}={udp_timeout}"])
        yield NatLab(phone, nat, server, udp_timeout)


@contextmanager
def public_cluster(
    lab: NatLab, workdir: Path, name_hint: str, subscribers: Iterable[str], password: str
) -> Iterator[Embedded]:
    """`sipfleet up --listen SERVER_IP:5060` (README) in the lab's server namespace, no
    config file, with ``subscribers`` (user@domain) added; stopped by PID after."""
    listen = ("--listen", f"{SERVER_IP}:5060")
    with embedded_cluster(workdir, name_hint, ns=lab.server, up_args=listen) as public:
        for aor in subscribers:
            added = public.sipfleet("subscriber", "add", aor, "--password", password)
            assert added.returncode == 0, added.stdout + added.stderr
        yield public


CONTROL_PORT = 9999
# A control flow through the NAT: one datagram from the phone's namespace to a server that
# never answers. Its conntrack entry is as idle as the phone's own mapping would be.
SILENT_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
try:
    s.recv(100)
except TimeoutError:
    pass
"""
SEND_ONE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.sendto(b"hello", (sys.argv[2], int(sys.argv[3])))
"""


def nat_remembers(nat: Namespace, port: int) -> bool:
    """The NAT holds a UDP conntrack entry towards ``port``."""
    listed = nat.run(["conntrack", "-L", "-p", "udp", "--orig-port-dst", str(port)])
    return f"dport={port}" in listed.stdout


def wait_until_the_nat_forgets(lab: NatLab) -> None:
    """A control flow sends one datagram from the phone's namespace to the server's, and
    nothing after; returns once the NAT has forgotten it (its conntrack entry is gone):
    a phone that sent nothing of its own since as long ago is not reachable by itself."""
    timeout = lab.udp_timeout
    silent = lab.server.popen(
        [sys.executable, "-c", SILENT_SERVER, SERVER_IP, str(CONTROL_PORT), str(timeout + 20)]
    )
    try:
        sent = lab.phone.run(
            [sys.executable, "-c", SEND_ONE, PHONE_IP, SERVER_IP, str(CONTROL_PORT)]
        )
        assert sent.returncode == 0, sent.stderr
        assert nat_remembers(lab.nat, CONTROL_PORT)
        # the NAT's idle timeout passing is what is tested: wait until it forgot
        deadline = time.monotonic() + timeout + 15
        while nat_remembers(lab.nat, CONTROL_PORT):
            assert time.monotonic() < deadline, "the NAT never forgot the control flow"
            time.sleep(0.5)
    finally:
        silent.kill()
        silent.wait(timeout=5)
