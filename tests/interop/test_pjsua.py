"""PJSIP (pjsua2) against `sipfleet up` as users start it (no config file, phones on the LB).

Each phone is a pjsua2 program of its own in the cluster's namespace (null sound device),
registering through 127.0.0.1:5060; every SIP message it sends or receives is reported,
so SDP is compared byte for byte end to end. One call goes to a baresip phone.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop.agents import SipTrace, sdp_direction, sdp_media
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.agents.pjsua import Pjsua, why_no_pjsua
from tests.interop.lab import Embedded, Namespace
from tests.interop.natlab import (
    SERVER_IP,
    NatLab,
    natted_and_public_phones,
    public_cluster,
    wait_until_the_nat_forgets,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(why_no_pjsua() is not None, reason=why_no_pjsua() or ""),
]

DOMAIN = "example.com"
PASSWORD = "secret"
SUBSCRIBERS = ("alice", "bob", "carol")  # carol never registers: calls to her get 480
_rtp = itertools.count(30000, 100)

Phone = Callable[..., Pjsua]


@pytest.fixture(scope="module")
def cluster(embedded: Embedded) -> Embedded:
    for user in SUBSCRIBERS:
        added = embedded.sipfleet("subscriber", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)
        assert added.returncode == 0, added.stdout + added.stderr
    return embedded


@pytest.fixture
def phone(cluster: Embedded, tmp_path: Path) -> Iterator[Phone]:
    started: list[Pjsua] = []

    def start(user: str, *, transport: str = "udp", password: str = PASSWORD) -> Pjsua:
        agent = Pjsua(
            cluster.ns,
            tmp_path,
            user,
            DOMAIN,
            password,
            transport=transport,
            proxy=(cluster.lb_host, cluster.lb_port),
            rtp_base=next(_rtp),
        )
        started.append(agent)
        return agent.start()

    yield start
    for agent in started:
        agent.stop()
    print("--- sipfleet up (tail) ---")
    print(cluster.log_text()[-6000:])


def location(cluster: Embedded, user: str) -> str:
    shown = cluster.sipfleet("location", "show", f"{user}@{DOMAIN}")
    return shown.stdout + shown.stderr


def registered(agent: Pjsua) -> Pjsua:
    agent.wait_registered()
    return agent


def establish(caller: Pjsua, callee: Pjsua) -> tuple[int, int]:
    at_callee = callee.mark()
    at_caller = caller.dial(f"sip:{callee.user}@{DOMAIN}")
    callee.wait_incoming(since=at_callee)
    callee.answer()
    caller.wait_call_state("CONFIRMED", since=at_caller)
    callee.wait_call_state("CONFIRMED", since=at_callee)
    return at_caller, at_callee


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register(cluster: Embedded, phone: Phone, transport: str) -> None:
    alice = registered(phone("alice", transport=transport))
    register = alice.wait_message("REGISTER", sent=True)
    assert register.transport == transport.upper()
    contact = re.search(r"<(sip:[^>]+)>", register.header("contact"))
    assert contact is not None
    shown = location(cluster, "alice")
    assert contact.group(1).split(";")[0] in shown, shown


def test_wrong_password_is_refused(cluster: Embedded, phone: Phone) -> None:
    alice = phone("alice", password="not-the-password")
    code = alice.wait_registration()
    assert code in (401, 403), code
    assert "not registered" in location(cluster, "alice")


@pytest.mark.parametrize("transports", [("udp", "udp"), ("tcp", "udp")], ids=["udp", "tcp-udp"])
def test_call_sdp_hold_and_caller_hangs_up(phone: Phone, transports: tuple[str, str]) -> None:
    alice = registered(phone("alice", transport=transports[0]))
    bob = registered(phone("bob", transport=transports[1]))
    at_alice, at_bob = establish(alice, bob)

    offer_sent = dialog_creating_invites(alice.trace(since=at_alice))
    offer_got = bob.wait_message("INVITE", sent=False, since=at_bob)
    assert offer_sent
    assert offer_sent[-1].body
    assert offer_got.body == offer_sent[-1].body
    answer_sent = bob.wait_message("INVITE", sent=True, status=200, since=at_bob)
    answer_got = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
    assert sdp_media(answer_got.body)
    assert answer_got.body == answer_sent.body

    at_alice, at_bob = alice.mark(), bob.mark()
    alice.hold()
    reinvite = bob.wait_message("INVITE", sent=False, since=at_bob)
    assert sdp_direction(reinvite.body) == "sendonly"
    assert reinvite.header("call-id") == offer_got.header("call-id")
    held = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
    assert sdp_direction(held.body) in ("recvonly", "inactive")

    at_alice, at_bob = alice.mark(), bob.mark()
    alice.hangup()
    bob.wait_message("BYE", sent=False, since=at_bob)
    bob.wait_call_state("DISCONNECTED", since=at_bob)
    alice.wait_message("BYE", sent=False, status=200, since=at_alice)


def test_callee_hangs_up(phone: Phone) -> None:
    alice = registered(phone("alice"))
    bob = registered(phone("bob"))
    establish(alice, bob)
    at_alice, at_bob = alice.mark(), bob.mark()
    bob.hangup()
    alice.wait_message("BYE", sent=False, since=at_alice)
    alice.wait_call_state("DISCONNECTED", since=at_alice)
    bob.wait_message("BYE", sent=False, status=200, since=at_bob)


def test_cancel_before_answer(phone: Phone) -> None:
    alice = registered(phone("alice"))
    bob = registered(phone("bob"))
    at_bob = bob.mark()
    at_alice = alice.dial(f"sip:bob@{DOMAIN}")
    bob.wait_incoming(since=at_bob)
    alice.wait_message("INVITE", sent=False, status=180, since=at_alice)
    alice.hangup()
    bob.wait_message("CANCEL", sent=False, since=at_bob)
    ended = bob.wait_call_state("DISCONNECTED", since=at_bob)
    assert ended["code"] == 487, ended
    alice.wait_message("INVITE", sent=False, status=487, since=at_alice)


@pytest.mark.parametrize(("callee", "status"), [("carol", 480), ("nobody", 404)])
def test_call_to_absent_user(phone: Phone, callee: str, status: int) -> None:
    alice = registered(phone("alice"))
    at = alice.dial(f"sip:{callee}@{DOMAIN}")
    ended = alice.wait_call_state("DISCONNECTED", since=at)
    assert ended["code"] == status, ended


def dialog_creating_invites(trace: list[SipTrace]) -> list[SipTrace]:
    """The INVITEs a phone sent without a To tag (the first, then the one with
    credentials): PJSIP may re-INVITE once the call is confirmed, to settle one codec."""
    return [
        m
        for m in trace
        if m.sent and m.status is None and m.method == "INVITE" and "tag=" not in m.header("to")
    ]


def test_unregister(cluster: Embedded, phone: Phone) -> None:
    bob = registered(phone("bob"))
    assert "not registered" not in location(cluster, "bob")
    at = bob.unregister()
    unregister = bob.wait_message("REGISTER", sent=True, since=at)
    assert "expires=0" in unregister.header("contact") or unregister.header("expires") == "0"
    assert bob.wait_registration(since=at) == 200
    assert "not registered" in location(cluster, "bob")


@pytest.mark.skipif(why_no_baresip() is not None, reason=why_no_baresip() or "")
def test_call_to_baresip(cluster: Embedded, phone: Phone, tmp_path: Path) -> None:
    """PJSIP calls a baresip phone: the offer arrives as sent, the call ends cleanly."""
    alice = registered(phone("alice"))
    with Baresip(cluster.ns, tmp_path, "bob", DOMAIN, PASSWORD, rtp_base=next(_rtp)) as bob:
        bob.wait_registered()
        at_bob = bob.mark()
        at_alice = alice.dial(f"sip:bob@{DOMAIN}")
        bob.wait_incoming(since=at_bob)
        bob.accept()
        alice.wait_call_state("CONFIRMED", since=at_alice)
        offer_sent = dialog_creating_invites(alice.trace(since=at_alice))
        offer_got = bob.wait_message("INVITE", sent=False, since=at_bob)
        assert offer_sent
        assert offer_got.body == offer_sent[-1].body
        answer_sent = bob.wait_message("INVITE", sent=True, status=200, since=at_bob)
        answer_got = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
        assert answer_got.body == answer_sent.body
        at_bob = bob.mark()
        alice.hangup()
        bob.wait_closed(since=at_bob)
        alice.wait_call_state("DISCONNECTED", since=at_alice)


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
    subscribers = [f"{user}@{DOMAIN}" for user in ("alice", "bob")]
    with (
        public_cluster(natlab, tmp_path / "up", "pnat", subscribers, PASSWORD) as public,
        phone_keepalives_dropped(natlab.phone) as dropped,
    ):
        alice, bob = natted_and_public_phones(
            natlab, public, Pjsua, tmp_path, DOMAIN, PASSWORD, _rtp
        )
        with alice, bob:
            alice.wait_registered()
            bob.wait_registered()
            wait_until_the_nat_forgets(natlab)

            establish(bob, alice)
            at_alice = alice.mark()
            bob.hangup()
            alice.wait_call_state("DISCONNECTED", since=at_alice)
            # what kept the mapping: the LB's keepalives, received through the NAT
            assert [m for m in alice.trace() if m.method == "OPTIONS" and not m.sent], (
                public.log_text()[-3000:]
            )
        # every keep-alive PJSIP sent of its own was dropped before the NAT saw it
        assert dropped() == len(PJ_KEEPALIVE_SENT.findall(alice.log_path.read_text()))
