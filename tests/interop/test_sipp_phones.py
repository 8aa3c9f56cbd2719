"""sipp phones against `sipfleet up` as users get it (no config file), UDP and TCP.

The phones behave as vendors' phones do: a phone sends its REGISTER from one port while
its Contact names another, the port it listens on for calls (so the calls, and every
in-dialog request, arrive at the Contact port, not at the port the REGISTER came from).
Callers authenticate (407) with the password set by `sipfleet subscriber add`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.lab import Embedded, Phone, body, find_message, first_line, start_phone

pytestmark = [pytest.mark.interop, pytest.mark.netns]

DOMAIN = "example.com"
PASSWORD = "secret"
USERS = ("alice", "bob", "carol", "erin")  # carol is never registered; erin only tries
TRANSPORTS = ("udp", "tcp")
_ports = itertools.count(6000, 2)  # the namespace's loopback is ours alone


@pytest.fixture(scope="module")
def lab(embedded: Embedded) -> Embedded:
    for user in USERS:
        added = embedded.sipfleet("subscriber", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)
        assert added.returncode == 0, added.stdout + added.stderr
    return embedded


def lb(embedded: Embedded) -> str:
    return f"{embedded.lb_host}:{embedded.lb_port}"


@dataclass
class Registered:
    user: str
    register_port: int  # where its REGISTER came from
    contact_port: int  # where it listens for calls
    transport: str


def register(
    lab: Embedded,
    workdir: Path,
    user: str,
    transport: str,
    *,
    expires: int = 600,
    contact_port: int | None = None,
    password: str = PASSWORD,
    scenario: str = "phone_register",
) -> tuple[Registered, Phone]:
    register_port = next(_ports)
    contact = contact_port if contact_port is not None else register_port + 1
    phone = start_phone(
        lab.ns,
        scenario,
        workdir,
        port=register_port,
        target=lb(lab),
        transport=transport,
        keys={
            "user": user,
            "domain": DOMAIN,
            "contact_port": str(contact),
            "expires": str(expires),
        },
        credentials=(user, password),
        timeout=10,
    )
    return Registered(user, register_port, contact, transport), phone


@contextmanager
def registered(lab: Embedded, workdir: Path, user: str, transport: str) -> Iterator[Registered]:
    """``user`` registered from one port with a Contact naming the next; unregistered after
    (so the next test's calls do not fork to a phone that is gone)."""
    phone, run = register(lab, workdir, user, transport)
    result = run.wait(20)
    assert result.ok, f"{user} did not register: {result.explain()}\n{lab.log_text()[-3000:]}"
    try:
        yield phone
    finally:
        _, gone = register(
            lab, workdir, user, transport, expires=0, contact_port=phone.contact_port
        )
        gone.wait(20)


def location(lab: Embedded, aor: str | None = None) -> str:
    shown = lab.sipfleet("location", "show", *([aor] if aor else []))
    return shown.stdout + shown.stderr


def call(
    lab: Embedded,
    workdir: Path,
    caller: Registered,
    callee: Registered,
    caller_scenario: str,
    callee_scenario: str,
    timeout: float = 15,
) -> tuple[Phone, Phone]:
    """The callee listens on its Contact port, the caller calls from its Contact port."""
    answering = start_phone(
        lab.ns,
        callee_scenario,
        workdir,
        port=callee.contact_port,
        transport=callee.transport,
        keys={"user": callee.user},
        timeout=timeout,
    )
    calling = start_phone(
        lab.ns,
        caller_scenario,
        workdir,
        port=caller.contact_port,
        target=lb(lab),
        transport=caller.transport,
        keys={"user": caller.user, "peer": callee.user, "domain": DOMAIN},
        credentials=(caller.user, PASSWORD),
        timeout=timeout,
    )
    return calling, answering


def both_ok(
    lab: Embedded, calling: Phone, answering: Phone, timeout: float = 25
) -> tuple[str, str]:
    caller = calling.wait(timeout)
    callee = answering.wait(timeout if caller.ok else 1)  # a failed call: stop it now
    log = lab.log_text()[-4000:]
    both = f"caller: {caller.explain()}\n\ncallee: {callee.explain()}\n\nsipfleet:\n{log}"
    assert caller.ok, both
    assert callee.ok, both
    return caller.messages, callee.messages


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_from_another_port_than_the_contact(
    lab: Embedded, tmp_path: Path, transport: str
) -> None:
    with registered(lab, tmp_path, "alice", transport) as alice:
        shown = location(lab, f"alice@{DOMAIN}")
        assert f"127.0.0.1:{alice.contact_port}" in shown, shown
    shown = location(lab, f"alice@{DOMAIN}")
    assert f"127.0.0.1:{alice.contact_port}" not in shown, shown


def test_the_challenge_a_phone_reads_first_is_md5(lab: Embedded, tmp_path: Path) -> None:
    """Phones answer the first WWW-Authenticate they find; most know MD5 only."""
    phone, run = register(lab, tmp_path, "alice", "udp")
    result = run.wait(20)
    assert result.ok, result.explain()
    (challenge,) = find_message(result.messages, "received", "SIP/2.0 401")
    offered = [
        line.split(":", 1)[1].strip()
        for line in challenge.splitlines()
        if line.lower().startswith("www-authenticate:")
    ]
    assert offered, challenge
    algorithm = re.search(r"algorithm\s*=\s*\"?([\w-]+)", offered[0], flags=re.IGNORECASE)
    assert algorithm is None or algorithm.group(1).upper() == "MD5", offered  # absent: MD5
    _, gone = register(lab, tmp_path, "alice", "udp", expires=0, contact_port=phone.contact_port)
    assert gone.wait(20).ok


def test_wrong_password_is_refused(lab: Embedded, tmp_path: Path) -> None:
    _, run = register(
        lab, tmp_path, "erin", "udp", password="not-the-password", scenario="phone_register_refused"
    )
    result = run.wait(20)
    assert result.ok, result.explain()  # the credentials were answered by 401 or 403
    final = find_message(result.messages, "received", "SIP/2.0 ")[-1]
    assert first_line(final).split()[1] in ("401", "403"), final
    assert "not registered" in location(lab, f"erin@{DOMAIN}")


def alice_calls_bob(
    lab: Embedded, workdir: Path, transport: str, caller_scenario: str, callee_scenario: str
) -> tuple[str, str]:
    """alice and bob registered (asymmetric ports), alice calls, both scenarios end well:
    what each phone's trace holds."""
    with (
        registered(lab, workdir, "alice", transport) as alice,
        registered(lab, workdir, "bob", transport) as bob,
    ):
        calling, answering = call(lab, workdir, alice, bob, caller_scenario, callee_scenario)
        return both_ok(lab, calling, answering)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_offer_answer_hold_update_info_both_ways(
    lab: Embedded, tmp_path: Path, transport: str
) -> None:
    """The whole dialog between two asymmetric phones: SDP carried intact both ways, hold,
    UPDATE and INFO in both directions, the ACK of each side's 2xx, BYE from the caller."""
    caller, callee = alice_calls_bob(
        lab, tmp_path, transport, "phone_caller_dialog", "phone_callee_dialog"
    )

    offers_sent = find_message(caller, "sent", "INVITE ", with_body=True)
    offers_received = find_message(callee, "received", "INVITE ", with_body=True)
    # the authenticated INVITE's offer, then the hold offer: each arrives as it was sent
    assert [body(m) for m in offers_sent[-2:]] == [body(m) for m in offers_received[:2]]
    answers_sent = find_message(callee, "sent", "SIP/2.0 200", with_body=True)
    answers_received = find_message(caller, "received", "SIP/2.0 200", with_body=True)
    assert [body(m) for m in answers_sent[:2]] == [body(m) for m in answers_received[:2]]
    assert "a=sendonly" in body(offers_received[1])
    # and the other way: the callee's resume offer and the caller's answer
    resume = find_message(callee, "sent", "INVITE ", with_body=True)
    resumed = find_message(caller, "received", "INVITE ", with_body=True)
    assert [body(m) for m in resume] == [body(m) for m in resumed]
    assert [body(m) for m in find_message(caller, "sent", "SIP/2.0 200", with_body=True)] == [
        body(m) for m in find_message(callee, "received", "SIP/2.0 200", with_body=True)
    ]
    for method in ("UPDATE", "INFO", "ACK"):  # each side's requests reached the other
        assert find_message(callee, "received", f"{method} "), method
        assert find_message(caller, "received", f"{method} "), method


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_callee_hangs_up_and_the_bye_reaches_the_caller(
    lab: Embedded, tmp_path: Path, transport: str
) -> None:
    caller, _ = alice_calls_bob(
        lab, tmp_path, transport, "phone_caller_wait_bye", "phone_callee_hangup"
    )
    assert find_message(caller, "received", "BYE ")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_before_answer(lab: Embedded, tmp_path: Path, transport: str) -> None:
    _, callee = alice_calls_bob(
        lab, tmp_path, transport, "phone_caller_cancel", "phone_callee_ring_cancel"
    )
    assert find_message(callee, "received", "CANCEL ")


@pytest.mark.parametrize(("callee", "status"), [("carol", "480"), ("nobody", "404")])
def test_call_that_cannot_reach_anyone(
    lab: Embedded, tmp_path: Path, callee: str, status: str
) -> None:
    """carol exists but has no phone registered: 480; nobody has no account: 404."""
    with registered(lab, tmp_path, "alice", "udp") as alice:
        calling = start_phone(
            lab.ns,
            "phone_caller_refused",
            tmp_path,
            port=alice.contact_port,
            target=lb(lab),
            keys={"user": "alice", "peer": callee, "domain": DOMAIN},
            credentials=("alice", PASSWORD),
            timeout=15,
        )
        result = calling.wait(25)
    assert result.ok, f"{result.explain()}\n{lab.log_text()[-3000:]}"
    final = find_message(result.messages, "received", "SIP/2.0 ")[-1]
    assert first_line(final).split()[1] == status, final


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unregister(lab: Embedded, tmp_path: Path, transport: str) -> None:
    phone, run = register(lab, tmp_path, "bob", transport)
    assert run.wait(20).ok
    assert f"127.0.0.1:{phone.contact_port}" in location(lab, f"bob@{DOMAIN}")
    _, gone = register(lab, tmp_path, "bob", transport, expires=0, contact_port=phone.contact_port)
    result = gone.wait(20)
    assert result.ok, result.explain()
    assert "not registered" in location(lab, f"bob@{DOMAIN}")
    shown = lab.sipfleet("location", "show")
    assert shown.stdout.strip() == "no bindings", shown.stdout  # every test unregistered
