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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from tests.interop.lab import Namespace, why_no_lab

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
