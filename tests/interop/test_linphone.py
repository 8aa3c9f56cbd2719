"""Linphone's console client (linphonec) against `sipfleet up` as users start it (no config
file, phones on the LB).

Each phone is its own linphonec process with a home directory and linphonerc of its own,
registering through 127.0.0.1:5060 (UDP or TCP) inside the cluster's namespace; belle-sip's
log shows every SIP message it sent and received, so SDP is compared byte for byte end to
end. The namespace gets a default route through a veth pair of its own (see
``give_default_route``): without a non-loopback address liblinphone takes the network for
down after 5 s and closes its transports. One call goes to a baresip phone.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.agents import SipTrace, sdp_direction, sdp_media
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.agents.linphone import Linphone, give_default_route, why_no_linphone
from tests.interop.lab import Embedded
from tests.interop.natlab import SERVER_IP, NatLab, public_cluster, wait_until_the_nat_forgets

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(why_no_linphone() is not None, reason=why_no_linphone() or ""),
]

DOMAIN = "example.com"
PASSWORD = "secret"
SUBSCRIBERS = ("alice", "bob", "carol")  # carol never registers: calls to her get 480
_rtp = itertools.count(40000, 100)

Phone = Callable[..., Linphone]


@pytest.fixture(scope="module")
def cluster(embedded: Embedded) -> Embedded:
    give_default_route(embedded.ns)
    for user in SUBSCRIBERS:
        added = embedded.sipfleet("subscriber", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)
        assert added.returncode == 0, added.stdout + added.stderr
    return embedded


@pytest.fixture
def phone(cluster: Embedded, tmp_path: Path) -> Iterator[Phone]:
    """Start a linphonec for a user (registering on its own); all stopped after."""
    started: list[Linphone] = []

    def start(user: str, *, transport: str = "udp", password: str = PASSWORD) -> Linphone:
        agent = Linphone(
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
    went_down = [agent.aor for agent in started if agent.network_went_down()]
    for agent in started:
        agent.stop()
    assert not went_down, f"liblinphone took the network for down: {went_down}"
    print("--- sipfleet up (tail) ---")
    print(cluster.log_text()[-6000:])


def location(cluster: Embedded, user: str) -> str:
    shown = cluster.sipfleet("location", "show", f"{user}@{DOMAIN}")
    return shown.stdout + shown.stderr


def registered(agent: Linphone) -> Linphone:
    agent.wait_registered()
    return agent


def only(messages: list[SipTrace], what: str) -> SipTrace:
    assert messages, f"no {what} in the trace"
    return messages[-1]


def final_status(agent: Linphone, since: int) -> int:
    finals = [
        m.status
        for m in agent.responses("INVITE", sent=False, since=since)
        if m.status is not None and m.status >= 200 and m.status != 407
    ]
    assert finals, f"no final response to the INVITE:\n{agent.output.text()[since:][-4000:]}"
    return finals[-1]


def establish(caller: Linphone, callee: Linphone) -> tuple[int, int]:
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
    assert f"transport={transport}" in contact.group(1)
    shown = location(cluster, "alice")
    assert contact.group(1).split(";")[0] in shown, shown


def test_wrong_password_is_refused(cluster: Embedded, phone: Phone) -> None:
    alice = phone("alice", password="not-the-password")
    alice.wait_register_failed()
    assert not alice.saw(r"to \[LinphoneRegistrationOk\]")
    refusals = [m.status for m in alice.responses("REGISTER", sent=False)]
    assert refusals
    assert all(status in (401, 403) for status in refusals), refusals
    assert "not registered" in location(cluster, "alice")


@pytest.mark.parametrize("transports", [("udp", "udp"), ("tcp", "udp")], ids=["udp", "tcp-udp"])
def test_call_sdp_hold_and_caller_hangs_up(phone: Phone, transports: tuple[str, str]) -> None:
    alice = registered(phone("alice", transport=transports[0]))
    bob = registered(phone("bob", transport=transports[1]))
    at_alice, at_bob = establish(alice, bob)

    # the offer and the answer arrive as they were sent, byte for byte
    offer_sent = only(alice.requests("INVITE", sent=True, since=at_alice), "INVITE")
    assert offer_sent.transport == transports[0].upper()
    offer_got = only(bob.requests("INVITE", sent=False, since=at_bob), "INVITE")
    assert offer_sent.body
    assert offer_got.body == offer_sent.body
    answer_sent = bob.wait_message("INVITE", sent=True, status=200, since=at_bob)
    answer_got = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
    assert sdp_media(answer_got.body)
    assert answer_got.body == answer_sent.body

    # hold: a re-INVITE with a=sendonly reaches bob, his recvonly answer reaches alice
    at_alice, at_bob = alice.mark(), bob.mark()
    alice.hold()
    reinvite = bob.wait_message("INVITE", sent=False, since=at_bob)
    assert sdp_direction(reinvite.body) == "sendonly"
    assert reinvite.header("call-id") == offer_got.header("call-id")
    held = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
    assert sdp_direction(held.body) in ("recvonly", "inactive")
    alice.wait_call_state("Paused", since=at_alice)
    bob.wait_call_state("PausedByRemote", since=at_bob)

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
    alice.wait_message("INVITE", sent=False, status=180, since=at_alice)
    alice.hangup()
    bob.wait_message("CANCEL", sent=False, since=at_bob)
    bob.wait_closed(since=at_bob)
    alice.wait_message("CANCEL", sent=False, status=200, since=at_alice)
    alice.wait_message("INVITE", sent=False, status=487, since=at_alice)
    assert not bob.saw(r"to LinphoneCallConnected\b", since=at_bob)


@pytest.mark.parametrize(("callee", "status"), [("carol", 480), ("nobody", 404)])
def test_call_to_absent_user(phone: Phone, callee: str, status: int) -> None:
    alice = registered(phone("alice"))
    at = alice.dial(f"sip:{callee}@{DOMAIN}")
    alice.wait_closed(since=at)
    alice.wait_message("INVITE", sent=False, status=status, since=at)
    assert final_status(alice, at) == status


def test_unregister(cluster: Embedded, phone: Phone) -> None:
    bob = registered(phone("bob"))
    assert "not registered" not in location(cluster, "bob")
    at = bob.unregister()
    unregister = bob.wait_message("REGISTER", sent=True, since=at)
    assert "expires=0" in unregister.header("contact") or unregister.header("expires") == "0"
    bob.wait_message("REGISTER", sent=False, status=200, since=at)
    bob.wait_unregistered(since=at)
    assert "not registered" in location(cluster, "bob")


@pytest.mark.skipif(why_no_baresip() is not None, reason=why_no_baresip() or "")
def test_call_to_baresip_and_back(cluster: Embedded, phone: Phone, tmp_path: Path) -> None:
    """linphonec calls a baresip phone and baresip calls it back: each offer and answer
    arrives as the other client sent it; each call ends cleanly."""
    alice = registered(phone("alice"))
    with Baresip(cluster.ns, tmp_path, "bob", DOMAIN, PASSWORD, rtp_base=next(_rtp)) as bob:
        bob.wait_registered()
        at_bob = bob.mark()
        at_alice = alice.dial(f"sip:bob@{DOMAIN}")
        bob.wait_incoming(since=at_bob)
        bob.accept()
        alice.wait_established(since=at_alice)
        bob.wait_established(since=at_bob)
        offer_sent = only(alice.requests("INVITE", sent=True, since=at_alice), "INVITE")
        offer_got = bob.wait_message("INVITE", sent=False, since=at_bob)
        assert offer_sent.body
        assert offer_got.body == offer_sent.body
        answer_sent = bob.wait_message("INVITE", sent=True, status=200, since=at_bob)
        answer_got = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
        assert answer_got.body == answer_sent.body
        at_alice, at_bob = alice.mark(), bob.mark()
        alice.hangup()
        bob.wait_closed(since=at_bob)
        alice.wait_closed(since=at_alice)

        # and back: baresip calls linphonec, which answers; baresip hangs up
        at_alice = alice.mark()
        at_bob = bob.dial(f"sip:alice@{DOMAIN}")
        alice.wait_incoming(since=at_alice)
        alice.accept()
        bob.wait_established(since=at_bob)
        alice.wait_established(since=at_alice)
        offer_sent = only(bob.requests("INVITE", sent=True, since=at_bob), "INVITE")
        offer_got = alice.wait_message("INVITE", sent=False, since=at_alice)
        assert offer_sent.body
        assert offer_got.body == offer_sent.body
        answer_sent = alice.wait_message("INVITE", sent=True, status=200, since=at_alice)
        answer_got = bob.wait_message("INVITE", sent=False, status=200, since=at_bob)
        assert answer_got.body == answer_sent.body
        at_alice = alice.mark()
        bob.hangup()
        alice.wait_message("BYE", sent=False, since=at_alice)
        alice.wait_closed(since=at_alice)


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.skipif(why_no_baresip() is not None, reason=why_no_baresip() or "")
def test_call_to_natted_phone_after_the_mapping_lifetime(natlab: NatLab, tmp_path: Path) -> None:
    """linphonec (alice) registers from behind the NAT and sends nothing more of its own (no
    keepalives of its own: ``keepalive_period=0``); once the NAT has forgotten a flow as idle
    as hers, a call from baresip (bob, on the server's side) still reaches her: the LB's
    default keepalives are what kept her mapping."""
    subscribers = [f"{user}@{DOMAIN}" for user in ("alice", "bob")]
    with public_cluster(natlab, tmp_path / "up", "lnat", subscribers, PASSWORD) as public:
        lb = (public.lb_host, public.lb_port)
        alice = Linphone(
            natlab.phone,
            tmp_path,
            "alice",
            DOMAIN,
            PASSWORD,
            proxy=lb,
            keepalive_ms=0,
            rtp_base=next(_rtp),
        )
        bob = Baresip(
            natlab.server,
            tmp_path,
            "bob",
            DOMAIN,
            PASSWORD,
            proxy=lb,
            local_ip=SERVER_IP,
            rtp_base=next(_rtp),
        )
        with alice, bob:
            alice.wait_registered()
            bob.wait_registered()
            # the registration is settled (the NAT helper may re-register with the address
            # the registrar saw): from here on alice sends nothing unless asked
            quiet_from = alice.mark()
            wait_until_the_nat_forgets(natlab)

            # alice sent no request of her own while the NAT was forgetting (only answers)
            own = [m for m in alice.trace(since=quiet_from) if m.sent and m.status is None]
            assert not own, [m.start_line for m in own]
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
            assert not alice.network_went_down()
