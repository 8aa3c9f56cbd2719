"""Calls through the proxy core with the real routing (``harness.RoutedShell``): the
policy and planner over a temporary SQLite database, the fake shell and its fake clock,
no sockets. Callers and callees are addresses; what they would receive is what the
core sends to them."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sipfleet.core.proxy.actions import ForwardAck
from sipfleet.core.proxy.hooks import MessageHooks
from sipfleet.routing.api import CallContext
from sipfleet.sip import ParseError, Request, Response
from sipfleet.sip.digest import compute_ha1, compute_response, parse_auth_header
from sipfleet.storage import Storage, open_storage
from sipfleet.storage.dsn import Dsn, Dsns
from sipfleet.transport.base import Destination, Peer
from tests.core.proxy.harness import (
    CALLER,
    DOMAIN,
    PROXY_HOST,
    PROXY_PORT,
    T1,
    RoutedShell,
    bind,
    make_config,
)
from tests.core.proxy.messages import request, response_to

OURS = f"<sip:{PROXY_HOST}:{PROXY_PORT};lr>"
Where = tuple[str, str, int]  # a destination's transport, host and port
CALLER_AT: Where = ("udp", CALLER.host, CALLER.port)
CALLER_CONTACT = f"sip:alice@{CALLER.host}:{CALLER.port}"


def where(destination: Destination) -> Where:
    return (destination.transport, destination.host, destination.port)


def device(n: int) -> tuple[str, Peer, Where]:
    """A callee's Contact, the peer its answers come from, and where it is reached."""
    host = f"203.0.113.{n}"
    return (
        f"sip:bob@{host}:5070",
        Peer("udp", host, 5070, PROXY_HOST, PROXY_PORT),
        ("udp", host, 5070),
    )


BOB, BOB_PEER, BOB_AT = device(5)
OTHER, OTHER_PEER, OTHER_AT = device(6)


def branch(n: int) -> str:
    return f"SIP/2.0/UDP {CALLER.host}:{CALLER.port};branch=z9hG4bK-uac-{n}"


def sent_to(shell: RoutedShell, method: str) -> list[tuple[Request, Where]]:
    """Requests of ``method`` sent (and forgotten), each with where it went."""
    found, kept = [], []
    for message, destination in shell.sent:
        if isinstance(message, Request) and message.method == method:
            found.append((message, where(destination)))
        else:
            kept.append((message, destination))
    shell.sent = kept
    return found


def answers(shell: RoutedShell) -> list[Response]:
    """Responses sent (and forgotten), in order."""
    found = [m for m, _ in shell.sent if isinstance(m, Response)]
    shell.sent = [(m, d) for m, d in shell.sent if not isinstance(m, Response)]
    return found


async def invite(shell: RoutedShell, **kwargs: Any) -> list[int]:
    """The caller's INVITE for bob; its 100 Trying checked. Returns the statuses of
    what else went upstream (forgotten, like the 100)."""
    await shell.receive_routed(request("INVITE", f"sip:bob@{DOMAIN}", **kwargs))
    trying, *others = shell.upstream()
    assert trying == 100
    return others


async def calling(storage: Storage, *contacts: str) -> tuple[RoutedShell, dict[Where, Request]]:
    """A proxy with bob at ``contacts``, and the caller's INVITE: the copies sent, by
    where they went."""
    shell = RoutedShell(make_config(), storage)
    await bind(storage, "bob", *contacts)
    await invite(shell)
    return shell, {to: sent for sent, to in sent_to(shell, "INVITE")}


# -- calls -----------------------------------------------------------------------------------
async def test_basic_call_with_bye_from_the_callee(storage: Storage) -> None:
    shell = RoutedShell(make_config(), storage)
    await bind(storage, "bob", BOB)
    sent = request("INVITE", f"sip:bob@{DOMAIN}")
    await invite(shell)
    ((incoming, to), *more) = sent_to(shell, "INVITE")
    assert more == []
    assert to == BOB_AT
    assert incoming.uri_text == BOB
    assert incoming.max_forwards == 69
    (record_route,) = incoming.header_values("record-route")
    assert record_route == shell.core.dialog_tokens.stamp(OURS, sent)  # ;dt=<this dialog's>
    assert len(incoming.vias) == 2

    shell.receive(response_to(incoming, 180), BOB_PEER)
    shell.receive(response_to(incoming, 200), BOB_PEER)
    ringing, answer = answers(shell)
    assert (ringing.status, answer.status) == (180, 200)
    assert ringing.to.tag == "b1"
    assert len(answer.vias) == 1  # the proxy's Via is gone

    shell.receive(request("ACK", BOB, to_tag="b1", extra=(f"Route: {record_route}",)))
    (forward,) = shell.other
    assert isinstance(forward, ForwardAck)
    assert where(forward.destination) == BOB_AT
    assert not forward.ack.has("route")

    bye = request(
        "BYE",
        CALLER_CONTACT,
        via="SIP/2.0/UDP 203.0.113.5:5070;branch=z9hG4bK-bye-1",
        from_="<sip:bob@example.com>;tag=b1",
        to="<sip:alice@example.com>",
        to_tag="a1",
        extra=(f"Route: {record_route}",),
    )
    await shell.receive_routed(bye, BOB_PEER)
    ((incoming_bye, to),) = sent_to(shell, "BYE")
    assert to == CALLER_AT
    assert incoming_bye.uri_text == CALLER_CONTACT
    shell.receive(response_to(incoming_bye, 200, to_tag="a1"))
    (ok,) = shell.take()
    assert isinstance(ok[0], Response)
    assert (ok[0].status, ok[0].cseq.method, where(ok[1])) == (200, "BYE", BOB_AT)


async def test_unknown_user_is_404_and_unregistered_user_is_480(storage: Storage) -> None:
    shell = RoutedShell(make_config(), storage)
    await shell.receive_routed(request("INVITE", f"sip:nobody@{DOMAIN}"))
    trying, unknown = answers(shell)
    assert (trying.status, unknown.status) == (100, 404)
    assert unknown.to.tag
    await shell.receive_routed(request("INVITE", f"sip:carol@{DOMAIN}", via=branch(2)))
    assert shell.upstream() == [100, 480]  # a subscriber, never registered
    assert shell.sent == []


async def test_parallel_fork_one_answers_the_other_is_cancelled(storage: Storage) -> None:
    shell, forks = await calling(storage, BOB, OTHER)
    to_desk, to_mobile = forks[BOB_AT], forks[OTHER_AT]
    shell.receive(response_to(to_mobile, 180, to_tag="m"), OTHER_PEER)
    shell.receive(response_to(to_desk, 180), BOB_PEER)
    shell.receive(response_to(to_desk, 200), BOB_PEER)
    ((cancel, to),) = sent_to(shell, "CANCEL")  # at once, not at Timer C
    assert to == OTHER_AT
    assert cancel.top_via.branch == to_mobile.top_via.branch
    shell.receive(response_to(cancel, 200, to_tag="m"), OTHER_PEER)
    shell.receive(response_to(to_mobile, 487, to_tag="m"), OTHER_PEER)
    ((ack, to),) = sent_to(shell, "ACK")  # the 487 is ACKed hop by hop
    assert (to, ack.top_via.branch) == (OTHER_AT, to_mobile.top_via.branch)
    shell.advance(64 * T1)
    assert shell.upstream() == [180, 180, 200]  # and never reaches the caller


async def test_busy_and_ringing_devices_the_ringing_one_answers(storage: Storage) -> None:
    shell, forks = await calling(storage, BOB, OTHER)
    to_busy, to_free = forks[BOB_AT], forks[OTHER_AT]
    shell.receive(response_to(to_busy, 486), BOB_PEER)
    ((_, to),) = sent_to(shell, "ACK")
    assert to == BOB_AT
    shell.receive(response_to(to_free, 200, to_tag="f"), OTHER_PEER)
    assert shell.upstream() == [200]


async def test_tcp_target_that_refuses_is_a_transport_error(storage: Storage) -> None:
    """The connect fails after the send was handed over: the endpoint reports it
    (``destination_failed``); the branch's 503 goes upstream as 500 (§16.7), at once."""
    shell, forks = await calling(storage, "sip:bob@127.0.0.1:9;transport=tcp")
    (to,) = forks
    assert to == ("tcp", "127.0.0.1", 9)
    shell.run(shell.core.destination_failed(Destination(*to)))
    (final,) = answers(shell)
    assert (final.status, final.reason) == (500, "Service Unavailable Downstream")


async def test_serial_forking_tries_the_lower_q_after_the_higher_fails(storage: Storage) -> None:
    shell = RoutedShell(make_config(serial_forking=True), storage)
    await bind(storage, "bob", BOB, q=1.0)
    await bind(storage, "bob", OTHER, q=0.5)
    await invite(shell)
    ((to_first, to),) = sent_to(shell, "INVITE")
    assert to == BOB_AT
    shell.advance(1.0)  # the lower q waits, Timer A's retransmissions aside
    assert {to for _, to in sent_to(shell, "INVITE")} == {BOB_AT}
    shell.receive(response_to(to_first, 486), BOB_PEER)
    ((to_second, to),) = sent_to(shell, "INVITE")
    assert to == OTHER_AT
    shell.receive(response_to(to_second, 200, to_tag="s"), OTHER_PEER)
    assert shell.upstream() == [200]


async def test_message_is_relayed_to_the_registered_contact(storage: Storage) -> None:
    shell = RoutedShell(make_config(), storage)
    await bind(storage, "bob", BOB)
    await shell.receive_routed(request("MESSAGE", f"sip:bob@{DOMAIN}"))
    ((incoming, to),) = sent_to(shell, "MESSAGE")
    assert to == BOB_AT
    assert not incoming.has("record-route")
    shell.receive(response_to(incoming, 200), BOB_PEER)
    assert shell.upstream() == [200]


# -- authentication -------------------------------------------------------------------------------
def credentials(challenge: Response, request_uri: str, password: str = "secret") -> str:
    offered = parse_auth_header(challenge.header_lines("proxy-authenticate")[0])
    ha1 = compute_ha1("alice", DOMAIN, password, offered.algorithm)
    response = compute_response(
        ha1,
        "INVITE",
        request_uri,
        offered.nonce or "",
        offered.algorithm,
        "auth",
        "00000001",
        "cn0nce",
    )
    return (
        f'Digest username="alice", realm="{DOMAIN}", nonce="{offered.nonce}", '
        f'uri="{request_uri}", response="{response}", algorithm={offered.algorithm}, '
        'qop=auth, nc=00000001, cnonce="cn0nce"'
    )


async def test_local_caller_must_authenticate(storage: Storage) -> None:
    shell = RoutedShell(make_config(authenticate=True), storage)
    await bind(storage, "bob", BOB)
    uri = f"sip:bob@{DOMAIN}"
    await shell.receive_routed(request("INVITE", uri))
    trying, challenge = answers(shell)
    assert (trying.status, challenge.status) == (100, 407)
    assert shell.sent == []  # bob hears nothing

    wrong = credentials(challenge, uri, "nope")
    await shell.receive_routed(
        request("INVITE", uri, cseq=2, via=branch(2), extra=(f"Proxy-Authorization: {wrong}",))
    )
    assert shell.upstream() == [100, 407]
    assert shell.sent == []

    right = credentials(challenge, uri)
    await shell.receive_routed(
        request("INVITE", uri, cseq=3, via=branch(3), extra=(f"Proxy-Authorization: {right}",))
    )
    assert shell.upstream() == [100]
    ((incoming, to),) = sent_to(shell, "INVITE")
    assert to == BOB_AT
    assert not incoming.has("proxy-authorization")  # our realm's credentials end here


async def test_from_other_than_the_authenticated_user_is_403(storage: Storage) -> None:
    shell = RoutedShell(make_config(authenticate=True), storage)
    uri = f"sip:bob@{DOMAIN}"
    forged_from = "<sip:bob@example.com>;tag=a1"
    await shell.receive_routed(request("INVITE", uri, from_=forged_from))
    _, challenge = answers(shell)
    assert challenge.status == 407
    authorization = f"Proxy-Authorization: {credentials(challenge, uri)}"
    await shell.receive_routed(
        request("INVITE", uri, cseq=2, via=branch(2), from_=forged_from, extra=(authorization,))
    )
    assert shell.upstream() == [100, 403]
    assert shell.sent == []


# -- bad input and load ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "max_forwards", "status"),
    [((), 0, 483), (("Proxy-Require: x-magic",), 70, 420)],
)
async def test_requests_the_proxy_refuses(
    storage: Storage, headers: tuple[str, ...], max_forwards: int, status: int
) -> None:
    shell = RoutedShell(make_config(), storage)
    await bind(storage, "bob", BOB)
    options = request("OPTIONS", f"sip:bob@{DOMAIN}", extra=headers, max_forwards=max_forwards)
    await shell.receive_routed(options)
    ((refused, to),) = shell.take()
    assert isinstance(refused, Response)
    assert (refused.status, where(to)) == (status, CALLER_AT)
    assert shell.asked == []


async def test_a_request_uri_of_another_scheme_is_a_416_parse_error(storage: Storage) -> None:
    """The core raises it; the endpoint answers it (test_engine: the shell's part)."""
    shell = RoutedShell(make_config(), storage)
    with pytest.raises(ParseError) as refused:
        shell.receive(request("OPTIONS", "http://example.com/bob"))
    assert refused.value.status == 416
    assert shell.sent == []
    assert len(shell.core.layer) == 0


async def test_overload_sheds_with_503(storage: Storage) -> None:
    shell = RoutedShell(make_config(), storage)
    shell.core.settings = dataclasses.replace(shell.core.settings, max_routing=0)
    await shell.receive_routed(request("INVITE", f"sip:bob@{DOMAIN}"))
    (refused,) = answers(shell)
    assert refused.status == 503
    assert refused.header("retry-after")
    assert len(shell.core.layer) == 0


async def test_while_overloaded_new_calls_get_503_and_dialogs_go_on(storage: Storage) -> None:
    shell = RoutedShell(make_config(), storage)
    for second in (0.0, 1.0):  # the socket buffer stays full
        shell.core.overload.observe(second, 0.0, 1 << 30)
    await shell.receive_routed(request("INVITE", f"sip:bob@{DOMAIN}"))
    (refused,) = answers(shell)
    assert refused.status == 503
    assert refused.header("retry-after")
    unrouted = request("BYE", BOB, to_tag="b1", call_id="dialog@test", via=branch(2))
    route = shell.core.dialog_tokens.stamp(OURS, unrouted)
    bye = request(
        "BYE", BOB, to_tag="b1", call_id="dialog@test", via=branch(2), extra=(f"Route: {route}",)
    )
    await shell.receive_routed(bye)
    ((incoming, to),) = sent_to(shell, "BYE")
    assert (incoming.call_id, to) == ("dialog@test", BOB_AT)


@pytest.mark.parametrize("retry", [True, False])
async def test_a_miss_on_the_replica_is_retried_on_the_primary(
    tmp_path: Path, storage: Storage, retry: bool
) -> None:
    """The phone has just registered: the binding is on the primary, not yet on the
    replica (a copy of the primary taken before the REGISTER)."""
    replica = tmp_path / "replica.db"
    primary = storage.dsns.write
    assert primary.path is not None
    with (
        closing(sqlite3.connect(primary.path)) as source,
        closing(sqlite3.connect(replica)) as copy,
    ):
        source.backup(copy)  # the WAL's content too
    lagging = open_storage(
        Dsns(primary, (Dsn.parse(f"sqlite:///{replica}"),)), retry_primary_on_miss=retry
    )
    try:
        shell = RoutedShell(make_config(), lagging)
        await bind(storage, "bob", BOB)  # written to the primary
        others = await invite(shell)
        if retry:
            ((_, to),) = sent_to(shell, "INVITE")
            assert to == BOB_AT
        else:
            assert others == [480]  # a subscriber without a binding, as it knows
            assert shell.sent == []
    finally:
        await lagging.close()


async def test_behind_a_trusted_lb_the_origin_is_what_the_lb_stamped(storage: Storage) -> None:
    """A gateway's call through the LB (the caller's address here, a trusted LB) skips
    authentication because the Via the LB stamped names the gateway, not because the LB
    is trusted."""
    config = make_config(authenticate=True, trusted_peers=["192.0.2.77"], trusted_lbs=[CALLER.host])
    shell = RoutedShell(config, storage)
    await bind(storage, "bob", BOB)
    gateway_via = "Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-gw-1;received=192.0.2.77"
    await shell.receive_routed(request("INVITE", f"sip:bob@{DOMAIN}", extra=(gateway_via,)))
    assert shell.upstream() == [100]  # no 407 on the way
    ((_, to),) = sent_to(shell, "INVITE")
    assert to == BOB_AT
    stranger_via = "Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-gw-2;received=198.51.100.1"
    call = request("INVITE", f"sip:bob@{DOMAIN}", via=branch(2), extra=(stranger_via,))
    await shell.receive_routed(call)
    assert shell.upstream() == [100, 407]
    assert shell.sent == []


class RecordingHooks(MessageHooks):
    """What a privacy feature would see: it tags our Record-Route and every message."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def record_route(self, call: CallContext, ours: str) -> str:
        return ours[:-1] + ";pv=sealed>"  # a parameter of its own, as PrivacyHooks adds

    def forwarding(self, request: Request, call: CallContext | None) -> None:
        self.seen.append(f"{request.method} {'in call' if call else 'stateless'}")
        request.add_header("X-Seen", "yes")

    def answering(self, response: Response, call: CallContext) -> None:
        self.seen.append(f"{response.status} {call.method}")


async def test_hooks_see_every_message_the_proxy_sends_on(storage: Storage) -> None:
    hooks = RecordingHooks()
    shell = RoutedShell(make_config(), storage, hooks=hooks)
    await bind(storage, "bob", BOB)
    await invite(shell)
    ((incoming, to),) = sent_to(shell, "INVITE")
    assert to == BOB_AT
    assert incoming.header("x-seen") == "yes"
    (record_route,) = incoming.header_values("record-route")
    assert record_route.endswith(";pv=sealed>")
    shell.receive(response_to(incoming, 200), BOB_PEER)
    assert shell.upstream() == [200]
    shell.receive(request("ACK", BOB, to_tag="b1", extra=(f"Route: {record_route}",)))
    (forward,) = shell.other
    assert isinstance(forward, ForwardAck)
    assert forward.ack.header("x-seen") == "yes"
    assert hooks.seen == ["INVITE in call", "200 INVITE", "ACK stateless"]


# -- no open relay (a Route or To tag claims a dialog the cluster never made) ----------------
@pytest.mark.parametrize("method", ["MESSAGE", "INVITE", "BYE"])
@pytest.mark.parametrize("trick", ["loose", "strict", "foreign-dialog"])
async def test_a_claimed_dialog_does_not_relay_to_the_senders_address(
    storage: Storage, method: str, trick: str
) -> None:
    """The reproduction of the open relay: a To tag and a Route naming the proxy, the
    strict-route form (Request-URI = the proxy), or a Route with a real dialog token of
    another call. Nothing goes to the address the sender chose; the request is handled
    as a new one (here: a caller of another domain to another domain: 403)."""
    shell = RoutedShell(make_config(authenticate=True), storage)
    target = "sip:anyone@203.0.113.9:5070"
    if trick == "loose":
        uri, routes = target, (f"Route: {OURS}",)
    elif trick == "strict":
        uri, routes = f"sip:{PROXY_HOST}:{PROXY_PORT}", (f"Route: <{target}>",)
    else:
        other_call = request("INVITE", target, call_id="theirs@test")
        uri, routes = target, (f"Route: {shell.core.dialog_tokens.stamp(OURS, other_call)}",)
    claimed = request(
        method,
        uri,
        from_="<sip:ceo@bank.example>;tag=a1",
        to="<sip:anyone@elsewhere.example>",
        to_tag="made-up",
        call_id="relay-repro@test",
        extra=routes,
    )
    await shell.receive_routed(claimed)
    assert shell.upstream()[-1:] == [403]
    assert shell.sent == []
    assert shell.other == []
    assert shell.core.stats.foreign_routes == 1


async def test_a_local_callers_claimed_dialog_must_authenticate(storage: Storage) -> None:
    shell = RoutedShell(make_config(authenticate=True), storage)
    await bind(storage, "bob", BOB)
    await shell.receive_routed(request("BYE", BOB, to_tag="b1", extra=(f"Route: {OURS}",)))
    assert shell.upstream() == [407]
    assert shell.sent == []
    assert shell.other == []
