"""Caller privacy through the proxy core with the privacy hooks, on the fake clock: two
proxies of one pool (B at another address treats A's as its own, ``proxy.aliases``), the
location table and preferences in SQLite, caller and callee as addresses. No sockets."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sipfleet.core.proxy.actions import ForwardAck
from sipfleet.core.proxy.privacy_hooks import PrivacyHooks
from sipfleet.sip import Request, Response
from sipfleet.sip.privacy import ANONYMOUS_URI
from sipfleet.storage import Storage
from sipfleet.transport.base import Peer
from tests.core.proxy.harness import (
    CALLER,
    DOMAIN,
    PROXY_HOST,
    PROXY_PORT,
    TIMER_C,
    RoutedShell,
    bind,
    make_config,
)
from tests.core.proxy.messages import request, response_to

ALICE = "sip:alice@example.com"
ALICE_FROM = f"<{ALICE}>;tag=a1"  # as messages.request writes it
ANONYMOUS = f'"Anonymous" <{ANONYMOUS_URI}>;tag=a1'
CALLER_CONTACT = f"sip:alice@{CALLER.host}:{CALLER.port}"
BOB = "sip:bob@203.0.113.5:5070"
BOB_PEER = Peer("udp", "203.0.113.5", 5070, PROXY_HOST, PROXY_PORT)
SECOND_HOST = "192.0.2.2"


def pool_member(storage: Storage, *, second: bool = False, **proxy: Any) -> RoutedShell:
    """Proxy A, or B (``second``), which takes A's Route as its own."""
    if second:
        proxy["aliases"] = [f"{PROXY_HOST}:{PROXY_PORT}"]
    config = make_config(**proxy)
    host = SECOND_HOST if second else PROXY_HOST
    return RoutedShell(config, storage, hooks=PrivacyHooks.from_config(config), host=host)


def only(shell: RoutedShell, kind: type[Request] | type[Response]) -> Any:
    """The one message of ``kind`` sent (all sent are forgotten)."""
    (message,) = [m for m, _ in shell.take() if isinstance(m, kind)]
    return message


def statuses(shell: RoutedShell) -> dict[int, Response]:
    """The responses sent (and forgotten), by status; requests sent are kept."""
    found = {m.status: m for m, _ in shell.sent if isinstance(m, Response)}
    shell.sent = [(m, d) for m, d in shell.sent if not isinstance(m, Response)]
    return found


async def call(shell: RoutedShell, *headers: str) -> Request:
    """The caller's INVITE for bob; returns it as bob got it (the 100 forgotten)."""
    contact = f"Contact: <{CALLER_CONTACT}>"
    await shell.receive_routed(request("INVITE", f"sip:bob@{DOMAIN}", extra=(contact, *headers)))
    assert shell.upstream() == [100]
    incoming: Request = only(shell, Request)
    return incoming


def in_dialog_from_alice(method: str, cseq: int, route: str) -> Request:
    return request(
        method,
        BOB,
        to_tag="b1",
        cseq=cseq,
        via=f"SIP/2.0/UDP {CALLER.host}:{CALLER.port};branch=z9hG4bK-{method}-{cseq}",
        extra=(f"Route: {route}", f"Contact: <{CALLER_CONTACT}>"),
    )


def bye_from_bob(request_uri: str, route: str) -> Request:
    return request(
        "BYE",
        request_uri,
        from_=f"<sip:bob@{DOMAIN}>;tag=b1",
        to=f"<{ANONYMOUS_URI}>",
        to_tag="a1",
        via="SIP/2.0/UDP 203.0.113.5:5070;branch=z9hG4bK-bye-1",
        extra=(f"Route: {route}",),
    )


async def test_a_private_dialog_survives_on_another_proxy_of_the_pool(storage: Storage) -> None:
    first = pool_member(storage, privacy_hide_contact_user=True)
    second = pool_member(storage, second=True, privacy_hide_contact_user=True)
    await bind(storage, "bob", BOB)
    incoming = await call(first, "Privacy: id", f"P-Asserted-Identity: <{ALICE}>")
    assert incoming.header("From") == ANONYMOUS
    assert not incoming.has("P-Asserted-Identity")
    assert incoming.header("Contact") == f"<sip:anonymous@{CALLER.host}:{CALLER.port}>"
    (route,) = incoming.header_values("record-route")
    assert ";pv=" in route

    first.receive(response_to(incoming, 180), BOB_PEER)
    first.receive(response_to(incoming, 200), BOB_PEER)
    answers = statuses(first)
    assert answers[180].header("From") == ALICE_FROM
    assert answers[200].header("From") == ALICE_FROM

    # proxy A is gone from now on: everything goes through B
    second.receive(in_dialog_from_alice("ACK", 1, route))
    (forward,) = second.other
    assert isinstance(forward, ForwardAck)
    assert forward.ack.header("From") == ANONYMOUS
    await second.receive_routed(in_dialog_from_alice("INVITE", 2, route))
    assert second.upstream() == [100]
    reinvite: Request = only(second, Request)
    assert reinvite.header("From") == ANONYMOUS
    second.receive(response_to(reinvite, 200), BOB_PEER)
    assert only(second, Response).header("From") == ALICE_FROM

    await second.receive_routed(
        bye_from_bob(f"sip:anonymous@{CALLER.host}:{CALLER.port}", route), BOB_PEER
    )
    incoming_bye: Request = only(second, Request)
    assert incoming_bye.header("To") == ALICE_FROM
    assert incoming_bye.uri_text == CALLER_CONTACT  # its Contact user back
    second.receive(response_to(incoming_bye, 200, to_tag="a1"))
    assert only(second, Response).header("To") == ANONYMOUS


async def test_the_callee_sees_only_anonymous_in_the_cancel_and_the_ack_the_proxy_builds(
    storage: Storage,
) -> None:
    first = pool_member(storage)
    await bind(storage, "bob", BOB)
    incoming = await call(first, "Privacy: id")
    first.receive(response_to(incoming, 180), BOB_PEER)
    assert first.upstream() == [180]
    first.receive(request("CANCEL", f"sip:bob@{DOMAIN}"))
    answers = statuses(first)
    assert answers[200].header("From") == ALICE_FROM  # the CANCEL's
    assert answers[487].header("From") == ALICE_FROM
    (cancel,) = first.downstream("CANCEL")
    assert cancel.header("From") == ANONYMOUS
    first.receive(response_to(incoming, 487), BOB_PEER)
    (ack,) = first.downstream("ACK")
    assert ack.header("From") == ANONYMOUS


async def test_the_no_answer_408_reaches_the_caller_with_its_from(storage: Storage) -> None:
    first = pool_member(storage)
    await bind(storage, "bob", BOB)
    await storage.preferences.set("alice", DOMAIN, "clir", "on")  # no Privacy header
    incoming = await call(first)
    assert incoming.header("From") == ANONYMOUS
    first.receive(response_to(incoming, 180), BOB_PEER)
    assert first.upstream() == [180]
    first.advance(TIMER_C)
    (cancel,) = first.downstream("CANCEL")
    assert cancel.header("From") == ANONYMOUS
    first.receive(response_to(cancel, 200), BOB_PEER)
    first.receive(response_to(incoming, 487), BOB_PEER)
    timeout = statuses(first)[408]
    assert timeout.header("From") == ALICE_FROM


async def test_a_tampered_route_value_is_ignored_and_logged(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    first = pool_member(storage)
    second = pool_member(storage, second=True)
    await bind(storage, "bob", BOB)
    incoming = await call(first, "Privacy: id")
    (ours,) = incoming.header_values("record-route")
    first.receive(response_to(incoming, 200), BOB_PEER)
    assert first.upstream() == [200]
    at = ours.index("pv=") + 13
    forged = ours[:at] + ("A" if ours[at] != "A" else "B") + ours[at + 1 :]
    caplog.set_level(logging.WARNING, logger="sipfleet.privacy")
    await second.receive_routed(bye_from_bob(CALLER_CONTACT, forged), BOB_PEER)
    incoming_bye: Request = only(second, Request)
    assert incoming_bye.header("To") == f"<{ANONYMOUS_URI}>;tag=a1"  # as bob sent it
    assert "ignored" in caplog.text
    assert incoming_bye.call_id in caplog.text


async def test_a_caller_without_privacy_is_untouched(storage: Storage) -> None:
    first = pool_member(storage, privacy_hide_contact_user=True)
    await bind(storage, "bob", BOB)
    sent = request("INVITE", f"sip:bob@{DOMAIN}", extra=(f"Contact: <{CALLER_CONTACT}>",))
    incoming = await call(first)
    for name in ("From", "To", "Contact"):
        assert incoming.header(name) == sent.header(name)
    assert ";pv=" not in incoming.header_values("record-route")[0]
    first.receive(response_to(incoming, 200), BOB_PEER)
    assert only(first, Response).header("From") == sent.header("From")
