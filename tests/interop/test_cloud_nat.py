"""Issue #18.5: sipfleet on a cloud host behind 1:1 NAT. The host's own address is private
(10.0.0.5); the internet reaches it at a public one (203.0.113.10) that a NAT maps both
ways. Three network namespaces, made and deleted here::

    phones 203.0.113.7 --- 203.0.113.10 [ cloud: DNAT to 10.0.0.5, SNAT back ] 10.0.0.1
                                                                                   |
                                                                 server 10.0.0.5 --+

The phones have no route to 10.0.0.0/24: only what names 203.0.113.10 reaches the LB.
`sipfleet up --listen 10.0.0.5:5060 --advertise 203.0.113.10` (no config file): two
baresip phones register, alice calls bob and bob hangs up; bob's BYE follows the
Record-Route the LB wrote, so it arrives only because that names the public address.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.lab import Namespace, embedded_cluster
from tests.interop.medialab import address, check, veth
from tests.interop.natlab import why_no_natlab
from tests.interop.phones import DOMAIN, PASSWORD, add_subscribers, establish, hang_up

pytestmark = [
    pytest.mark.interop,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(why_no_natlab() is not None, reason=why_no_natlab() or ""),
    pytest.mark.skipif(why_no_baresip() is not None, reason=why_no_baresip() or ""),
]

PHONES_IP = "203.0.113.7"
PUBLIC_IP = "203.0.113.10"  # the cloud's address of the host
CLOUD_INSIDE_IP = "10.0.0.1"
HOST_IP = "10.0.0.5"  # the host's own (private) address
ONE_TO_ONE = f"""
table ip sipfleet_cloudnat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "pub0" ip daddr {PUBLIC_IP} dnat to {HOST_IP}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub0" ip saddr {HOST_IP} snat to {PUBLIC_IP}
    }}
}}
"""


@dataclass
class CloudLab:
    phones: Namespace
    cloud: Namespace
    server: Namespace


@contextmanager
def cloud_lab(name_hint: str) -> Iterator[CloudLab]:
    with ExitStack() as stack:
        phones = stack.enter_context(Namespace(f"{name_hint}p"))
        cloud = stack.enter_context(Namespace(f"{name_hint}c"))
        server = stack.enter_context(Namespace(f"{name_hint}s"))
        veth(phones, "eth0", cloud, "pub0")
        veth(cloud, "lan0", server, "eth0")
        address(phones, "eth0", f"{PHONES_IP}/24")
        address(cloud, "pub0", f"{PUBLIC_IP}/24")
        address(cloud, "lan0", f"{CLOUD_INSIDE_IP}/24")
        address(server, "eth0", f"{HOST_IP}/24")
        check(server, ["ip", "route", "add", "default", "via", CLOUD_INSIDE_IP])
        check(cloud, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        check(cloud, ["nft", "-f", "-"], stdin=ONE_TO_ONE)
        yield CloudLab(phones, cloud, server)


def test_phones_call_through_an_lb_that_advertises_its_public_address(tmp_path: Path) -> None:
    up_args = ("--listen", f"{HOST_IP}:5060", "--advertise", PUBLIC_IP)
    with (
        cloud_lab("cnat") as lab,
        embedded_cluster(tmp_path / "up", "cnat", ns=lab.server, up_args=up_args) as cluster,
    ):
        add_subscribers(cluster, ("alice", "bob"))
        alice, bob = (
            Baresip(lab.phones, tmp_path, user, DOMAIN, PASSWORD, proxy=(PUBLIC_IP, 5060),
                    local_ip=PHONES_IP, rtp_base=base)
            for user, base in (("alice", 21000), ("bob", 21200))
        )  # fmt: skip
        with alice, bob:
            alice.wait_registered()
            bob.wait_registered()
            _, at_callee = establish(alice, bob)
            (invite,) = [
                m for m in bob.trace(since=at_callee) if m.is_request("INVITE", sent=False)
            ]
            routes = invite.headers.get("record-route", [])
            assert any(f"@{PUBLIC_IP}:5060" in route for route in routes), routes
            assert not any(HOST_IP in route for route in routes), routes
            hang_up(bob, alice)  # bob's BYE goes by that Record-Route
            assert alice.trouble() is None, alice.trouble()
