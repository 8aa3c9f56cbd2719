"""What the interop tests of real phones (baresip, Linphone, PJSIP) share.

The subscribers every test module's cluster gets, the steps the tests are made of
(establish a call, check that offer and answer arrive byte for byte as sent, hold, hang up,
cancel, call a phone behind the NAT), and the cases that are the same for every client.
A test module runs them by importing them (``from tests.interop.phones import *`` brings
those of ``__all__``, which every client runs; ``test_register`` and
``test_call_to_baresip_and_back`` are imported by name where they apply): each case is
written once and still reported under the module's own name, with the module's client
(its ``AGENT``: see the ``phone`` fixture in conftest.py). What only one client does or
reports lives in its driver (tests/interop/agents/) or in its own test module.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.interop.agents import Agent, SipTrace, sdp_direction, sdp_media
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.lab import Embedded
from tests.interop.natlab import NatLab, public_cluster, wait_until_the_nat_forgets

__all__ = [  # the cases every client runs as they are
    "test_call_sdp_hold_and_caller_hangs_up",
    "test_call_to_absent_user",
    "test_callee_hangs_up",
    "test_cancel_before_answer",
    "test_unregister",
    "test_wrong_password_is_refused",
]

DOMAIN = "example.com"
PASSWORD = "secret"
# carol never registers: calls to her get 480. dave's phone has a wrong password: after
# its guesses the LB locks dave at this address (docs/lb.md, "Abuse protection"), so no
# other test registers him.
SUBSCRIBERS = ("alice", "bob", "carol", "dave")

A = TypeVar("A", bound=Agent[Any])
Phone = Callable[..., Agent[Any]]
"""``phone(user, *, transport="udp", password=PASSWORD, kind=None)``: a started phone of the
module's client (or of ``kind``) on the module's cluster (see conftest.py)."""


def client_marks(why_not: str | None) -> list[pytest.MarkDecorator]:
    """A client's test module's marks: interop, skipped with ``why_not`` (the client is not
    installed) unless that is None."""
    return [pytest.mark.interop, pytest.mark.skipif(why_not is not None, reason=why_not or "")]


needs_baresip = pytest.mark.skipif(why_no_baresip() is not None, reason=why_no_baresip() or "")

_rtp_ports: dict[type[Agent[Any]], Iterator[int]] = {}


def rtp_ports(kind: type[Agent[Any]]) -> Iterator[int]:
    """The first RTP ports of successive phones of ``kind``, 100 apart."""
    return _rtp_ports.setdefault(kind, itertools.count(kind.RTP_BASE, 100))


def add_subscribers(cluster: Embedded, users: tuple[str, ...], password: str = PASSWORD) -> None:
    for user in users:
        added = cluster.sipfleet("subscriber", "add", f"{user}@{DOMAIN}", "--password", password)
        assert added.returncode == 0, added.stdout + added.stderr


# -- steps ---------------------------------------------------------------------------------


def location(cluster: Embedded, user: str) -> str:
    shown = cluster.sipfleet("location", "show", f"{user}@{DOMAIN}")
    return shown.stdout + shown.stderr


def registered(agent: A) -> A:
    agent.wait_registered()
    return agent


def only(messages: list[SipTrace], what: str) -> SipTrace:
    """The last of ``messages``, which must not be empty."""
    assert messages, f"no {what} in the trace"
    return messages[-1]


def final_status(agent: Agent[Any], since: int) -> int:
    """The status of the last final response (other than 407) to an INVITE the phone got."""
    finals = [
        m.status
        for m in agent.responses("INVITE", sent=False, since=since)
        if m.status is not None and m.status >= 200 and m.status != 407
    ]
    assert finals, f"no final response to the INVITE:\n{agent.tail(since)[-4000:]}"
    return finals[-1]


def dialog_creating_invites(trace: list[SipTrace]) -> list[SipTrace]:
    """The INVITEs a phone sent without a To tag (the first, then the one with
    credentials): PJSIP may re-INVITE once the call is confirmed, to settle one codec."""
    return [m for m in trace if m.is_request("INVITE", sent=True) and "tag=" not in m.header("to")]


def registered_contact(cluster: Embedded, alice: Agent[Any]) -> str:
    """alice registers over her transport; returns the Contact URI, which `location show`
    lists."""
    registered(alice)
    register = only(alice.requests("REGISTER", sent=True), "REGISTER")
    assert register.transport == alice.transport.upper()
    contact = re.search(r"<(sip:[^>]+)>", register.header("contact"))
    assert contact is not None
    shown = location(cluster, alice.user)
    assert contact.group(1).split(";")[0] in shown, shown
    return contact.group(1)


def establish(caller: Agent[Any], callee: Agent[Any]) -> tuple[int, int]:
    """caller dials callee, callee answers; returns where each trace of the call begins."""
    at_callee = callee.mark()
    at_caller = caller.dial(f"sip:{callee.user}@{callee.domain}")
    callee.wait_incoming(since=at_callee)
    callee.accept()
    caller.wait_established(since=at_caller)
    callee.wait_established(since=at_callee)
    return at_caller, at_callee


def offer_and_answer_arrive_as_sent(
    caller: Agent[Any], callee: Agent[Any], at_caller: int, at_callee: int
) -> SipTrace:
    """The offer (the caller's dialog-creating INVITE) and the answer (the callee's 200)
    arrive as they were sent, byte for byte; returns the INVITE the callee got."""
    offer_sent = only(dialog_creating_invites(caller.trace(since=at_caller)), "INVITE sent")
    assert offer_sent.transport == caller.transport.upper()
    offer_got = callee.wait_message("INVITE", sent=False, since=at_callee)
    assert offer_sent.body
    assert offer_got.body == offer_sent.body
    answer_sent = callee.wait_message("INVITE", sent=True, status=200, since=at_callee)
    answer_got = caller.wait_message("INVITE", sent=False, status=200, since=at_caller)
    assert sdp_media(answer_got.body)
    assert answer_got.body == answer_sent.body
    return offer_got


def hold(holder: Agent[Any], other: Agent[Any], call_id: str) -> None:
    """A re-INVITE with a=sendonly reaches ``other`` in the call ``call_id``, its recvonly
    (or inactive) answer reaches ``holder``; each client says so where it reports holds."""
    at_holder, at_other = holder.mark(), other.mark()
    holder.hold()
    reinvite = other.wait_message("INVITE", sent=False, since=at_other)
    assert sdp_direction(reinvite.body) == "sendonly"
    assert reinvite.header("call-id") == call_id
    held = holder.wait_message("INVITE", sent=False, status=200, since=at_holder)
    assert sdp_direction(held.body) in ("recvonly", "inactive")
    holder.wait_held(since=at_holder)
    other.wait_held_by_remote(since=at_other)


def hang_up(by: Agent[Any], other: Agent[Any]) -> None:
    """``by`` hangs up: ``other``'s call ends with its BYE, whose 200 reaches ``by``."""
    at_by, at_other = by.mark(), other.mark()
    by.hangup()
    other.wait_message("BYE", sent=False, since=at_other)
    other.wait_closed(since=at_other)
    by.wait_message("BYE", sent=False, status=200, since=at_by)


def cancel_before_answer(caller: Agent[Any], callee: Agent[Any]) -> None:
    """caller hangs up while callee rings: the CANCEL reaches callee, whose INVITE ends
    with 487 at both ends, and no call was established."""
    at_callee = callee.mark()
    at_caller = caller.dial(f"sip:{callee.user}@{callee.domain}")
    callee.wait_incoming(since=at_callee)
    caller.wait_message("INVITE", sent=False, status=180, since=at_caller)
    caller.hangup()
    callee.wait_message("CANCEL", sent=False, since=at_callee)
    callee.wait_closed(since=at_callee)
    callee.wait_message("INVITE", sent=True, status=487, since=at_callee)
    caller.wait_message("CANCEL", sent=False, status=200, since=at_caller)
    caller.wait_message("INVITE", sent=False, status=487, since=at_caller)
    assert not callee.was_established(since=at_callee)


@contextmanager
def nat_cluster(
    lab: NatLab, workdir: Path, name_hint: str, users: tuple[str, ...] = ("alice", "bob")
) -> Iterator[Embedded]:
    """`sipfleet up --listen` in the NAT lab's server namespace, with ``users``."""
    subscribers = [f"{user}@{DOMAIN}" for user in users]
    with public_cluster(lab, workdir / "up", name_hint, subscribers, PASSWORD) as public:
        yield public


def natted_phones_are_called(
    lab: NatLab, public: Embedded, natted: Sequence[Agent[Any]], bob: Agent[Any]
) -> None:
    """The ``natted`` phones (started, behind the NAT) register and send nothing more of
    their own; once the NAT has forgotten a flow as idle as theirs, bob's call (bob
    started, beside the server) still reaches each: the LB's default keepalives are what
    kept their mappings."""
    for phone in (*natted, bob):
        phone.wait_registered()
    # the registrations are settled (a NAT helper may re-register with the address the
    # registrar saw): from here on the phones send nothing unless asked
    quiet_from = [phone.mark() for phone in natted]
    wait_until_the_nat_forgets(lab)

    for phone, since in zip(natted, quiet_from, strict=True):
        # it sent no request of its own while the NAT was forgetting (only answers)
        own = [m for m in phone.trace(since=since) if m.sent and m.status is None]
        assert not own, (phone.user, [m.start_line for m in own])
        establish(bob, phone)
        hang_up(bob, phone)
        # what kept the mapping: the LB's keepalives, received through the NAT
        keepalives = [m for m in phone.trace() if m.is_request("OPTIONS", sent=False)]
        assert keepalives, (phone.user, public.log_text()[-3000:])
        assert phone.trouble() is None, (phone.user, phone.trouble())


# -- the cases every client runs (imported by the test modules) ----------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register(phone_cluster: Embedded, phone: Phone, transport: str) -> None:
    registered_contact(phone_cluster, phone("alice", transport=transport))


def test_wrong_password_is_refused(phone_cluster: Embedded, phone: Phone) -> None:
    dave = phone("dave", password="not-the-password")
    dave.wait_register_failed()
    refusals = [m.status for m in dave.responses("REGISTER", sent=False)]
    assert refusals
    assert all(status in (401, 403) for status in refusals), refusals
    assert "not registered" in location(phone_cluster, "dave")


@pytest.mark.parametrize("transports", [("udp", "udp"), ("tcp", "udp")], ids=["udp", "tcp-udp"])
def test_call_sdp_hold_and_caller_hangs_up(phone: Phone, transports: tuple[str, str]) -> None:
    alice = registered(phone("alice", transport=transports[0]))
    bob = registered(phone("bob", transport=transports[1]))
    at_alice, at_bob = establish(alice, bob)
    offer_got = offer_and_answer_arrive_as_sent(alice, bob, at_alice, at_bob)
    hold(alice, bob, offer_got.header("call-id"))
    hang_up(alice, bob)


def test_callee_hangs_up(phone: Phone) -> None:
    alice = registered(phone("alice"))
    bob = registered(phone("bob"))
    establish(alice, bob)
    hang_up(bob, alice)


def test_cancel_before_answer(phone: Phone) -> None:
    cancel_before_answer(registered(phone("alice")), registered(phone("bob")))


@pytest.mark.parametrize(("callee", "status"), [("carol", 480), ("nobody", 404)])
def test_call_to_absent_user(phone: Phone, callee: str, status: int) -> None:
    alice = registered(phone("alice"))
    at = alice.dial(f"sip:{callee}@{DOMAIN}")
    alice.wait_closed(since=at)
    alice.wait_message("INVITE", sent=False, status=status, since=at)
    assert final_status(alice, at) == status


def test_unregister(phone_cluster: Embedded, phone: Phone) -> None:
    bob = registered(phone("bob"))
    assert "not registered" not in location(phone_cluster, "bob")
    at = bob.unregister()
    unregister = bob.wait_message("REGISTER", sent=True, since=at)
    assert "expires=0" in unregister.header("contact") or unregister.header("expires") == "0"
    bob.wait_message("REGISTER", sent=False, status=200, since=at)
    bob.wait_unregistered(since=at)
    assert "not registered" in location(phone_cluster, "bob")


@needs_baresip
@pytest.mark.parametrize("baresip_calls", [False, True], ids=["to-baresip", "from-baresip"])
def test_call_to_baresip_and_back(phone: Phone, baresip_calls: bool) -> None:
    """The module's client calls a baresip phone, or baresip calls it: the offer and the
    answer arrive as the other client sent them; the caller hangs up, both calls end."""
    alice = registered(phone("alice"))
    bob = registered(phone("bob", kind=Baresip))
    caller, callee = (bob, alice) if baresip_calls else (alice, bob)
    at_caller, at_callee = establish(caller, callee)
    offer_and_answer_arrive_as_sent(caller, callee, at_caller, at_callee)
    at_alice = alice.mark()
    hang_up(caller, callee)
    alice.wait_closed(since=at_alice)
