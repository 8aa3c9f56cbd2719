"""Two LBs, active-active, with a real RFC 5626 phone: baresip registered through both as
its two outbound proxies (two flows: UDP through lb1, TCP through lb2), in the
namespaces of ``twolbs.py``.

One lab, one story in order, as an operator would check it: both flows are registered
(two bindings, one per LB, one instance); each flow is pinged by its own LB only; a call
rings the phone once, over its newest flow; a node sending down one LB's flow through
the other LB gets 430 Flow Failed; then the LB of that newest flow is killed (SIGKILL)
and, with its binding still stored, a call reaches the phone over the other flow within
the proxy's flow timeout. The measured seconds are printed.

Before it, carol registers the natural way, two flows over UDP (one local socket, so
libre writes one Contact for both): the location table keeps two bindings, one per LB,
keyed by instance and reg-id; when she quits, each flow's un-REGISTER removes it.

The TCP flow is made the newest on purpose (its connection is held back until the UDP
flow is registered): a killed LB's TCP connections are closed by its kernel at once, so
the phone's own detection of the failed flow can be timed; over UDP the phone would only
notice at its next STUN keepalive (libre: every 23-29 s).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.core.proxy.targets import most_recent_first
from sipfleet.storage import Binding
from tests.interop.agents import SipTrace
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.lab import why_no_lab
from tests.interop.twolbs import (
    ALICE_IP,
    BOB_IP,
    CAROL_IP,
    CLIENT_PORT,
    CLUSTER_PORT,
    DOMAIN,
    LB_IPS,
    PASSWORD,
    OutboundBaresip,
    TwoLbLab,
    connections_held,
    crlf_pings,
    options_down_flow,
    two_lb_lab,
)

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

KEEPALIVE_INTERVAL_S = 1.0  # lb.keepalive_interval_s: short, so a few intervals are quick
FLOW_TIMEOUT_S = 2.0  # proxy.flow_timeout_s
PINGS_WATCHED_S = 4 * KEEPALIVE_INTERVAL_S
# A killed process's connections are closed by its kernel (FIN or RST at once): the phone
# sees its flow fail without waiting for its own CRLF keepalive (libre: every 96-120 s,
# 10 s for the pong), the bound for a host that vanishes without a word.
FLOW_FAILURE_BOUND_S = 3.0
# The call after the kill: the proxy waits FLOW_TIMEOUT_S on the dead LB's flow (no 100
# Trying can come), then the INVITE goes down the other flow; the rest is one round of
# digest challenge and the INVITE's relay, well under a second on this lab.
RING_AGAIN_BOUND_S = FLOW_TIMEOUT_S + 2.0
BRANCH = re.compile(r"branch=([^;,\s]+)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoLbLab]:
    why = why_no_lab() or why_no_baresip()
    if why is not None:
        pytest.skip(why)
    workdir = tmp_path_factory.mktemp("two-lbs")
    with two_lb_lab(
        workdir, keepalive_interval_s=KEEPALIVE_INTERVAL_S, flow_timeout_s=FLOW_TIMEOUT_S
    ) as made:
        yield made


def flows(lab: TwoLbLab) -> list[Binding]:
    return lab.cluster.bindings("alice", DOMAIN)


def test_two_udp_flows_with_one_contact_are_two_bindings(lab: TwoLbLab, tmp_path: Path) -> None:
    """Runs before the story below, which kills lb2."""
    first, second = (f"sip:{LB_IPS[lb]}:{CLIENT_PORT};transport=udp" for lb in ("lb1", "lb2"))
    carol = OutboundBaresip(
        lab.phones, tmp_path, "carol", DOMAIN, PASSWORD, local_ip=CAROL_IP,
        outbounds=(first, second),
    )  # fmt: skip
    try:
        carol.start()
        carol.wait_flow_registered(1, timeout=15)
        carol.wait_flow_registered(2, timeout=15)
        bindings = lab.cluster.bindings("carol", DOMAIN)
        assert sorted((lab.lb_of(b.path), b.reg_id) for b in bindings) == [
            ("lb1", 1),
            ("lb2", 2),
        ], bindings
        assert len({b.contact for b in bindings}) == 1, bindings
        assert len({b.instance for b in bindings}) == 1, bindings
    finally:
        carol.stop()  # /quit: one un-REGISTER per flow, with its reg-id
    assert lab.cluster.bindings("carol", DOMAIN) == []


def test_a_phone_with_two_outbound_lbs(lab: TwoLbLab, tmp_path: Path) -> None:
    udp_flow, tcp_flow = f"sip:{LB_IPS['lb1']}:{CLIENT_PORT}", f"sip:{LB_IPS['lb2']}:{CLIENT_PORT}"
    alice = OutboundBaresip(
        lab.phones, tmp_path, "alice", DOMAIN, PASSWORD, local_ip=ALICE_IP,
        outbounds=(f"{udp_flow};transport=udp", f"{tcp_flow};transport=tcp"),
    )  # fmt: skip
    try:
        with connections_held(lab.phones, LB_IPS["lb2"], CLIENT_PORT):
            alice.start()
            alice.wait_flow_registered(1, timeout=15)  # UDP, through lb1
        alice.wait_flow_registered(2, timeout=15)  # TCP, through lb2, once its SYN passes
        the_two_flows_and_the_lbs_story(lab, alice, tmp_path)
    finally:
        alice.stop()


def the_two_flows_and_the_lbs_story(lab: TwoLbLab, alice: OutboundBaresip, tmp_path: Path) -> None:
    # two bindings, one per LB, one instance: RFC 5626 flows
    bindings = flows(lab)
    assert sorted(lab.lb_of(b.path) for b in bindings) == ["lb1", "lb2"], bindings
    assert len({b.instance for b in bindings}) == 1
    assert bindings[0].instance is not None
    assert sorted(b.reg_id for b in bindings if b.reg_id is not None) == [1, 2]

    # the proxy calls over the newest flow (TCP through lb2): lb2 is killed below; the
    # caller registers through lb1
    preferred = most_recent_first(bindings)[0]
    assert lab.lb_of(preferred.path) == "lb2"
    bob = Baresip(
        lab.phones, tmp_path, "bob", DOMAIN, PASSWORD,
        proxy=(LB_IPS["lb1"], CLIENT_PORT), local_ip=BOB_IP, rtp_base=20100,
    )  # fmt: skip
    with bob:
        bob.wait_registered(timeout=15)
        check_each_flow_is_pinged_by_its_own_lb(lab, udp_port=contact_port(bindings, "udp"))
        check_one_call_rings_once(alice, bob, LB_IPS["lb2"])
        check_a_foreign_flow_token_gets_430(lab, preferred, "lb1")
        kill_and_call_again(lab, alice, bob, "lb2", "lb1")


def contact_port(bindings: list[Binding], transport: str) -> int:
    """The port of the Contact registered over ``transport`` (TCP: ``;transport=tcp``)."""
    (found,) = [b for b in bindings if ("transport=tcp" in b.contact) == (transport == "tcp")]
    return int(found.contact.split(";")[0].rsplit(":", 1)[1])


def check_each_flow_is_pinged_by_its_own_lb(lab: TwoLbLab, udp_port: int) -> None:
    """lb1 pings the UDP flow at its port; lb2 the TCP flow on its connection (from the
    phone's side, a port of its own); nothing else comes, so no flow is pinged twice."""
    pings = crlf_pings(lab.phones, ALICE_IP, PINGS_WATCHED_S)
    least = PINGS_WATCHED_S / KEEPALIVE_INTERVAL_S - 1
    assert pings.get((LB_IPS["lb1"], udp_port), 0) >= least, pings
    (tcp_flow,) = [key for key in pings if key[0] == LB_IPS["lb2"]]
    assert pings[tcp_flow] >= least, pings
    assert tcp_flow[1] != udp_port, pings
    assert set(pings) == {(LB_IPS["lb1"], udp_port), tcp_flow}, pings


def check_one_call_rings_once(alice: OutboundBaresip, bob: Baresip, victim_ip: str) -> None:
    since = alice.mark()
    bob.dial(f"sip:alice@{DOMAIN}")
    alice.wait_incoming(timeout=10, since=since)
    alice.accept()
    alice.wait_established(since=since)
    bob.wait_established(since=since)
    bob.hangup()
    alice.wait_closed(since=since)
    invite = the_one_invite(alice, since)
    assert f"{victim_ip}:{CLIENT_PORT}" in invite.header("via")  # the newest flow's LB


def the_one_invite(phone: OutboundBaresip, since: int) -> SipTrace:
    """The INVITE the phone received after ``since``: one transaction (its copies over
    UDP, should the proxy have resent it, carry the same branch), over one flow."""
    invites = phone.requests("INVITE", sent=False, since=since)
    branches = {BRANCH.search(invite.header("via")) for invite in invites}
    assert len(invites) >= 1, invites
    assert len({found.group(1) for found in branches if found}) == 1, invites
    return invites[0]


def check_a_foreign_flow_token_gets_430(lab: TwoLbLab, flow: Binding, other_lb: str) -> None:
    """A node's request down one LB's flow reaching the other LB (as it would when a
    name both LBs answer to is in the Path): RFC 5626 §5.3, 430 Flow Failed."""
    assert flow.path is not None
    route = flow.path.split(",")[0].strip()
    own = f"{LB_IPS[lab.lb_of(route)]}:{CLUSTER_PORT}"
    assert own in route
    elsewhere = route.replace(own, f"{LB_IPS[other_lb]}:{CLUSTER_PORT}")
    assert options_down_flow(lab, other_lb, elsewhere) == "SIP/2.0 430 Flow Failed"


def kill_and_call_again(
    lab: TwoLbLab, alice: OutboundBaresip, bob: Baresip, victim: str, survivor: str
) -> None:
    process = lab.cluster.roles[victim].process
    assert process is not None
    since = alice.mark()
    killed = time.monotonic()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    # the dead LB's binding is still stored when the call is placed
    assert sorted(lab.lb_of(b.path) for b in flows(lab)) == ["lb1", "lb2"]
    calling = bob.dial(f"sip:alice@{DOMAIN}")

    alice.wait_register_failed(timeout=FLOW_FAILURE_BOUND_S, since=since)
    flow_failed = time.monotonic() - killed
    alice.wait_incoming(timeout=RING_AGAIN_BOUND_S, since=since)
    rang = time.monotonic() - killed
    alice.accept()
    bob.wait_established(since=calling)
    connected = time.monotonic() - killed
    print(
        f"\ntwo LBs: {victim} killed; alice's flow through it failed after {flow_failed:.2f} s, "
        f"a call rang her over {survivor} after {rang:.2f} s, connected after {connected:.2f} s"
    )
    invite = the_one_invite(alice, since)
    assert f"{LB_IPS[survivor]}:{CLIENT_PORT}" in invite.header("via")
    assert rang <= RING_AGAIN_BOUND_S
    bob.hangup()
    alice.wait_closed(since=since)
