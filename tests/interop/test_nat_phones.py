"""Phones of every client behind a NAT stay reachable on the LB's default keepalives alone.

baresip, PJSIP (pjsua2) and linphonec register at once from behind one NAT to `sipfleet up
--listen` (no config file) and then send nothing of their own; once the NAT has forgotten a
flow as idle as theirs, a baresip phone beside the server calls each of them. The NAT's
idle timeout is most of such a test's time, so the three clients share one wait.

What each client would otherwise do to keep its own mapping is switched off or dropped:
baresip sends nothing without RFC 5626 outbound, linphonec is configured with
``keepalive_period=0``, and PJSIP's CRLF keep-alives (every 15 s, its default) are dropped
on the phone's side of the NAT, and counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.interop import phones
from tests.interop.agents import Agent
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.agents.linphone import Linphone, why_no_linphone
from tests.interop.agents.pjsua import Pjsua, why_no_pjsua
from tests.interop.lab import Namespace
from tests.interop.natlab import PHONE_IP, SERVER_IP, NatLab

pytestmark = [*phones.client_marks(why_no_baresip()), pytest.mark.netns, pytest.mark.slow]

NO_KEEPALIVES = "sipfleet_no_phone_keepalives"
# PJSIP's SIP messages are never 2 bytes long: a 2-byte UDP payload to the LB is CRLF.
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
    """The phones' own CRLF keep-alives to the LB dropped in ``phone_ns``; yields how many
    so far."""

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


def natted_phones(lab: NatLab, workdir: Path, lb: tuple[str, int]) -> list[Agent[Any]]:
    """One phone of each installed client behind the NAT (baresip always), each its own
    user (not started)."""
    common: dict[str, Any] = {"proxy": lb}
    found: list[Agent[Any]] = [
        Baresip(
            lab.phone, workdir, "alice", phones.DOMAIN, phones.PASSWORD, local_ip=PHONE_IP,
            rtp_base=next(phones.rtp_ports(Baresip)), **common,
        )
    ]  # fmt: skip
    if why_no_pjsua() is None:
        found.append(
            Pjsua(
                lab.phone, workdir, "carol", phones.DOMAIN, phones.PASSWORD, local_ip=PHONE_IP,
                rtp_base=next(phones.rtp_ports(Pjsua)), **common,
            )
        )  # fmt: skip
    if why_no_linphone() is None:
        found.append(
            Linphone(
                lab.phone, workdir, "dave", phones.DOMAIN, phones.PASSWORD, keepalive_ms=0,
                rtp_base=next(phones.rtp_ports(Linphone)), **common,
            )
        )  # fmt: skip
    return found


def test_natted_phones_are_called_after_the_mapping_lifetime(
    natlab: NatLab, tmp_path: Path
) -> None:
    users = ("alice", "bob", "carol", "dave")
    with (
        phones.nat_cluster(natlab, tmp_path, "natph", users) as public,
        phone_keepalives_dropped(natlab.phone) as dropped,
        ExitStack() as started,
    ):
        lb = (public.lb_host, public.lb_port)
        natted = natted_phones(natlab, tmp_path, lb)
        bob = Baresip(
            natlab.server, tmp_path, "bob", phones.DOMAIN, phones.PASSWORD, proxy=lb,
            local_ip=SERVER_IP, rtp_base=next(phones.rtp_ports(Baresip)),
        )  # fmt: skip
        for phone in (*natted, bob):
            started.enter_context(phone)
        phones.natted_phones_are_called(natlab, public, natted, bob)
        # every keep-alive PJSIP sent of its own was dropped before the NAT saw it
        pjsua_sent = sum(
            len(PJ_KEEPALIVE_SENT.findall(phone.log_path.read_text()))
            for phone in natted
            if isinstance(phone, Pjsua)
        )
        assert dropped() == pjsua_sent
