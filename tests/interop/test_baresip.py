"""baresip against `sipfleet up` as users start it (no config file, phones on the LB).

Each phone is its own baresip process with a config directory of its own, registering
through 127.0.0.1:5060 (UDP or TCP) inside the cluster's namespace; its SIP trace shows
what it sent and what arrived, so SDP is compared byte for byte end to end.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.agents import SipTrace, sdp_direction, sdp_media
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.lab import Embedded
from tests.interop.natlab import (
    NatLab,
    natted_and_public_phones,
    public_cluster,
    wait_until_the_nat_forgets,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(why_no_baresip() is not None, reason=why_no_baresip() or ""),
]

DOMAIN = "example.com"
PASSWORD = "secret"
SUBSCRIBERS = ("alice", "bob", "carol")  # carol never registers: calls to her get 480
_rtp = itertools.count(20000, 100)

Phone = Callable[..., Baresip]


@pytest.fixture(scope="module")
def cluster(embedded: Embedded) -> Embedded:
    for user in SUBSCRIBERS:
        added = embedded.sipfleet("subscriber", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)
        assert added.returncode == 0, added.stdout + added.stderr
    return embedded


@pytest.fixture
def phone(cluster: Embedded, tmp_path: Path) -> Iterator[Phone]:
    """Start a registered (or at least started) baresip for a user; all stopped after."""
    started: list[Baresip] = []

    def start(user: str, *, transport: str = "udp", password: str = PASSWORD) -> Baresip:
        agent = Baresip(
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


def registered(agent: Baresip) -> Baresip:
    agent.wait_registered()
    return agent


def only(messages: list[SipTrace], what: str) -> SipTrace:
    assert messages, f"no {what} in the trace"
    return messages[-1]


def final_status(agent: Baresip, since: int) -> int:
    finals = [
        m.status
        for m in agent.responses("INVITE", sent=False, since=since)
        if m.status is not None and m.status >= 200 and m.status != 407
    ]
    assert finals, f"no final response to the INVITE:\n{agent.output.text()[since:][-4000:]}"
    return finals[-1]


def establish(caller: Baresip, callee: Baresip) -> tuple[int, int]:
    """caller dials callee, callee answers; returns where each trace of the call begins."""
    at_callee = callee.mark()
    at_caller = caller.dial(f"sip:{callee.user}@{DOMAIN}")
    callee.wait_incoming(since=at_callee)
    callee.accept()
    caller.wait_established(since=at_caller)
    callee.wait_established(since=at_callee)
    return at_caller, at_callee


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register(cluster: Embedded, phone: Phone, transport: str) -> None:
    alice = registered(phone("alice", transport=transport))
    register = only(alice.requests("REGISTER", sent=True), "REGISTER")
    assert register.transport == transport.upper()
    contact = re.search(r"<(sip:[^>]+)>", register.header("contact"))
    assert contact is not None
    shown = location(cluster, "alice")
    assert contact.group(1).split(";")[0] in shown, shown


def test_wrong_password_is_refused(cluster: Embedded, phone: Phone) -> None:
    alice = phone("alice", password="not-the-password")
    failure = alice.wait_register_failed()
    assert not alice.saw(r"200 OK \(\) \[\d+ binding"), failure
    assert "not registered" in location(cluster, "alice")


@pytest.mark.parametrize("transports", [("udp", "udp"), ("tcp", "udp")], ids=["udp", "tcp-udp"])
def test_call_sdp_hold_and_caller_hangs_up(phone: Phone, transports: tuple[str, str]) -> None:
    alice = registered(phone("alice", transport=transports[0]))
    bob = registered(phone("bob", transport=transports[1]))
    at_alice, at_bob = establish(alice, bob)

    # the offer and the answer arrive as they were sent, byte for byte
    offer_sent = only(alice.requests("INVITE", sent=True, since=at_alice), "INVITE")
    offer_got = only(bob.requests("INVITE", sent=False, since=at_bob), "INVITE")
    assert offer_sent.body
    assert offer_got.body == offer_sent.body
    answer_sent = [m for m in bob.responses("INVITE", sent=True, since=at_bob) if m.status == 200]
    answer_got = [
        m for m in alice.responses("INVITE", sent=False, since=at_alice) if m.status == 200
    ]
    assert answer_sent
    assert answer_got
    assert answer_got[-1].body == answer_sent[-1].body
    assert sdp_media(answer_got[-1].body)

    # hold: a re-INVITE with a=sendonly reaches bob, his recvonly answer reaches alice
    at_alice, at_bob = alice.mark(), bob.mark()
    alice.hold()
    reinvite = bob.wait_message("INVITE", sent=False, since=at_bob)
    assert sdp_direction(reinvite.body) == "sendonly"
    assert reinvite.header("call-id") == offer_got.header("call-id")
    held = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
    assert sdp_direction(held.body) in ("recvonly", "inactive")

    # alice hangs up: bob's call ends with her BYE
    at_alice, at_bob = alice.mark(), bob.mark()
    alice.hangup()
    bob.wait_message("BYE", sent=False, since=at_bob)
    bob.wait_closed(since=at_bob)
    alice.wait_message("BYE", sent=False, status=200, since=at_alice)


def test_callee_hangs_up(phone: Phone) -> None:
    alice = registered(phone("alice"))
    bob = registered(phone("bob"))
    establish(alice, bob)
    at_alice, at_bob = alice.mark(), bob.mark()
    bob.hangup()
    alice.wait_message("BYE", sent=False, since=at_alice)
    alice.wait_closed(since=at_alice)
    bob.wait_message("BYE", sent=False, status=200, since=at_bob)


def test_cancel_before_answer(phone: Phone) -> None:
    alice = registered(phone("alice"))
    bob = registered(phone("bob"))
    at_bob = bob.mark()
    at_alice = alice.dial(f"sip:bob@{DOMAIN}")
    bob.wait_incoming(since=at_bob)
    alice.hangup()
    bob.wait_message("CANCEL", sent=False, since=at_bob)
    bob.wait_closed(since=at_bob)
    alice.wait_message("CANCEL", sent=False, status=200, since=at_alice)
    alice.wait_message("INVITE", sent=False, status=487, since=at_alice)
    assert not bob.saw(r"Call established", since=at_bob)


@pytest.mark.parametrize(("callee", "status"), [("carol", 480), ("nobody", 404)])
def test_call_to_absent_user(phone: Phone, callee: str, status: int) -> None:
    alice = registered(phone("alice"))
    at = alice.dial(f"sip:{callee}@{DOMAIN}")
    alice.wait_closed(since=at)
    assert final_status(alice, at) == status


def test_unregister(cluster: Embedded, phone: Phone) -> None:
    bob = registered(phone("bob"))
    assert "not registered" not in location(cluster, "bob")
    at = bob.unregister()
    unregister = bob.wait_message("REGISTER", sent=True, since=at)
    assert "expires=0" in unregister.header("contact") or unregister.header("expires") == "0"
    bob.wait_message("REGISTER", sent=False, status=200, since=at)
    assert "not registered" in location(cluster, "bob")


@pytest.mark.netns
@pytest.mark.slow
def test_call_to_natted_phone_after_the_mapping_lifetime(natlab: NatLab, tmp_path: Path) -> None:
    """alice registers from behind the NAT and sends nothing more of her own; once the NAT
    has forgotten a flow as idle as hers, bob's call still reaches her (the LB's default
    keepalives are what kept her mapping)."""
    subscribers = [f"{user}@{DOMAIN}" for user in ("alice", "bob")]
    with public_cluster(natlab, tmp_path / "up", "bnat", subscribers, PASSWORD) as public:
        alice, bob = natted_and_public_phones(
            natlab, public, Baresip, tmp_path, DOMAIN, PASSWORD, _rtp
        )
        with alice, bob:
            alice.wait_registered()
            bob.wait_registered()
            wait_until_the_nat_forgets(natlab)

            at_alice = alice.mark()
            at_bob = bob.dial(f"sip:alice@{DOMAIN}")
            alice.wait_incoming(since=at_alice)
            alice.accept()
            bob.wait_established(since=at_bob)
            alice.wait_established(since=at_alice)
            at_alice = alice.mark()
            bob.hangup()
            alice.wait_closed(since=at_alice)
            # what kept the mapping: the LB's keepalives, received through the NAT
            assert [m for m in alice.trace() if m.method == "OPTIONS" and not m.sent], (
                public.log_text()[-3000:]
            )
