"""PJSIP (pjsua2) against `sipfleet up` as users start it (no config file, phones on the LB).

Each phone is a pjsua2 program of its own in the cluster's namespace (null sound device),
registering through 127.0.0.1:5060; every SIP message it sends or receives is reported,
so SDP is compared byte for byte end to end. Calls go to and from a baresip phone too. The
cases every client runs are in tests/interop/phones.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop import phones
from tests.interop.agents.pjsua import Pjsua, why_no_pjsua
from tests.interop.lab import Namespace
from tests.interop.natlab import SERVER_IP, NatLab, natted_and_public_phones
from tests.interop.phones import *  # noqa: F403  (the cases every client runs)
from tests.interop.phones import test_call_to_baresip_and_back, test_register  # noqa: F401

pytestmark = phones.client_marks(why_no_pjsua())

AGENT = Pjsua

# PJSIP keeps its own UDP mapping open: a CRLF keep-alive every 15 s (its default
# AccountNatConfig.udpKaIntervalSec, which the driver leaves on), shorter than the NAT's
# timeout. Dropped on the phone's side of the NAT, they leave the LB's keepalives as the
# only thing that can keep the mapping. Its SIP messages are never 2 bytes long.
NO_KEEPALIVES = "sipfleet_no_phone_keepalives"
DROP_KEEPALIVES = f"""
table ip {NO_KEEPALIVES} {{
    chain output {{
        type filter hook output priority filter; policy accept;
        ip daddr {SERVER_IP} udp dport 5060 udp length 10 @th,64,16 0x0d0a counter drop
    }}
}}
"""
PJ_KEEPALIVE_SENT = re.compile(r"Sending \d+ bytes keep-alive packet")


@contextmanager
def phone_keepalives_dropped(phone_ns: Namespace) -> Iterator[Callable[[], int]]:
    """The phone's own keep-alives to the LB dropped in ``phone_ns``; yields how many so far."""

    def dropped() -> int:
        listed = phone_ns.run(["nft", "list", "table", "ip", NO_KEEPALIVES])
        counted = re.search(r"counter packets (\d+)", listed.stdout)
        assert counted is not None, listed.stdout + listed.stderr
        return int(counted.group(1))

    loaded = phone_ns.run(["nft", "-f", "-"], input=DROP_KEEPALIVES)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    try:
        yield dropped
    finally:
        phone_ns.run(["nft", "delete", "table", "ip", NO_KEEPALIVES])


@pytest.mark.netns
@pytest.mark.slow
def test_call_to_natted_phone_after_the_mapping_lifetime(natlab: NatLab, tmp_path: Path) -> None:
    """alice (PJSIP) registers from behind the NAT and sends nothing more of her own; once
    the NAT has forgotten a flow as idle as hers, bob's call still reaches her (the LB's
    default keepalives are what kept her mapping: PJSIP's own are dropped before the NAT)."""
    with (
        phones.nat_cluster(natlab, tmp_path, "pnat") as public,
        phone_keepalives_dropped(natlab.phone) as dropped,
    ):
        rtp = phones.rtp_ports(Pjsua)
        alice, bob = natted_and_public_phones(
            natlab, public, Pjsua, tmp_path, phones.DOMAIN, phones.PASSWORD, rtp
        )
        phones.natted_phone_is_called(natlab, public, alice, bob)
        # every keep-alive PJSIP sent of its own was dropped before the NAT saw it
        assert dropped() == len(PJ_KEEPALIVE_SENT.findall(alice.log_path.read_text()))
