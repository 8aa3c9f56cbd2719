"""Caller privacy hooks (sans-IO): what the callee and the caller get in each message of a
private dialog, as the engine calls the hooks: our Record-Route, each forwarded copy
(made with the engine's own ``forward_copy``), each response going upstream, and later
requests arriving with our Route (removed with the engine's own ``take_our_route``) at
another proxy of the pool."""

from __future__ import annotations

import logging

import pytest

from sipfleet.core.proxy.addresses import OwnAddresses
from sipfleet.core.proxy.forward import forward_copy
from sipfleet.core.proxy.privacy_hooks import PrivacyHooks, TrustedHops
from sipfleet.core.proxy.routes import take_our_route
from sipfleet.core.proxy.targets import Target
from sipfleet.routing.api import Authenticated, CallContext, Reply
from sipfleet.sip import Request, Response, parse_message
from sipfleet.sip.builders import make_cancel, make_response
from sipfleet.sip.privacy import ANONYMOUS_URI, ROUTE_PARAM, PrivacySeal, privacy_requested
from sipfleet.sip.uri import parse_uri
from sipfleet.storage.lcr_rows import Gateway
from sipfleet.transport.base import Peer

SECRET = b"pool-secret"
OURS = "<sip:192.0.2.10:5080;lr>"  # proxy A's Record-Route
PROXY_A = OwnAddresses.build([("192.0.2.10", 5080)])
PROXY_B = OwnAddresses.build([("192.0.2.11", 5080)], ["192.0.2.10:5080"])  # A's sibling
LB_CALLER = "<sip:AAAtoken-alice@192.0.2.1:5060;lr>"  # the LB's Record-Route (caller's flow)
ALICE_FROM = '"Alice Smith" <sip:alice@example.com>;tag=a1'
ALICE_CONTACT = "<sip:alice@198.51.100.7:5062>"
BOB = "sip:bob@10.0.0.2:5060"
CALL_ID = "call-1@198.51.100.7"
PEER = Peer("udp", "192.0.2.1", 5060, "192.0.2.10", 5080)
GATEWAYS = (
    Gateway("gw-trusted", "10.1.0.1", 5060, trusted=True),
    Gateway("gw-plain", "10.1.0.2", 5060),
)


class NoServices:
    def is_local_domain(self, host: str) -> bool:
        return host == "example.com"

    def is_trusted_peer(self, host: str) -> bool:
        return False

    async def authenticate(self, call: CallContext) -> Authenticated | Reply:
        raise AssertionError("not asked")

    async def preferences(self, username: str, domain: str) -> dict[str, str]:
        return {}


def parse(text: str) -> Request:
    message = parse_message(("\r\n".join(text.strip().splitlines()) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def hooks(*, hide_contact_user: bool = False) -> PrivacyHooks:
    trusted = TrustedHops(["203.0.113.5"], lambda: GATEWAYS)
    return PrivacyHooks(PrivacySeal(SECRET), trusted, hide_contact_user=hide_contact_user)


def invite(*extra: str) -> Request:
    """alice's INVITE as the proxy gets it: through the LB, which Record-Routed itself."""
    lines = "\n".join(extra)
    return parse(f"""
INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-lb-1
Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-uac-1;rport=5062
Record-Route: {LB_CALLER}
Max-Forwards: 69
From: {ALICE_FROM}
To: <sip:bob@example.com>
Call-ID: {CALL_ID}
CSeq: 1 INVITE
Contact: {ALICE_CONTACT}
P-Asserted-Identity: <sip:alice@example.com>
Remote-Party-ID: "Alice" <sip:alice@example.com>;party=calling
{lines}
Content-Length: 0
""")


def context(request: Request, own: OwnAddresses | None = None) -> CallContext:
    """What the engine hands the hooks: §16.4 done (our Route removed)."""
    ours = take_our_route(request, own) if own is not None else None
    return CallContext(request, PEER, NoServices(), routed_to_us=ours is not None, our_route=ours)


def place(
    privacy: PrivacyHooks, request: Request, target: str = BOB, hide: bool | None = None
) -> tuple[CallContext, Request]:
    """The INVITE forwarded to ``target``: our Record-Route, then the copy."""
    call = context(request)
    call.hide_caller = hide
    copy, _ = forward_copy(request, Target(target), record_route=privacy.record_route(call, OURS))
    privacy.forwarding(copy, call)
    return call, copy


def callee_answers(copy: Request, status: int) -> Response:
    headers = [("Record-Route", rr) for rr in copy.header_values("record-route")]
    headers.append(("Contact", f"<{BOB}>"))
    return make_response(copy, status, to_tag="b1", headers=headers)


def our_record_route(message: Request | Response) -> str:
    return message.header_values("record-route")[0]


def from_caller(method: str, our_rr: str, cseq: int = 2) -> Request:
    """alice's request in the dialog: Route = the Record-Route reversed, the LB's removed."""
    return parse(f"""
{method} {BOB} SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-lb-{cseq}
Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-uac-{cseq};rport=5062
Route: {our_rr}
Max-Forwards: 69
From: {ALICE_FROM}
To: <sip:bob@example.com>;tag=b1
Call-ID: {CALL_ID}
CSeq: {cseq} {method}
Contact: {ALICE_CONTACT}
Content-Length: 0
""")


def from_callee(
    method: str, our_rr: str, uri: str = "sip:alice@198.51.100.7:5062", after: str = LB_CALLER
) -> Request:
    """bob's request in the dialog: Route = the Record-Route as it came (ours, the LB's)."""
    route = f"{our_rr}, {after}" if after else our_rr
    return parse(f"""
{method} {uri} SIP/2.0
Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-uas-1
Route: {route}
Max-Forwards: 70
From: <sip:bob@example.com>;tag=b1
To: "Anonymous" <{ANONYMOUS_URI}>;tag=a1
Call-ID: {CALL_ID}
CSeq: 1 {method}
Contact: <{BOB}>
Content-Length: 0
""")


def forwarded(privacy: PrivacyHooks, request: Request, own: OwnAddresses) -> Request:
    """A request of the dialog arriving at a proxy with ``own`` addresses, relayed."""
    call = context(request.copy(), own)
    assert call.routed_to_us
    copy, _ = forward_copy(call.request, Target(), record_route=None)
    privacy.forwarding(copy, call)
    return copy


def answered(privacy: PrivacyHooks, request: Request, own: OwnAddresses, status: int) -> Response:
    """The response to a request of the dialog on its way back through the proxy."""
    call = context(request.copy(), own)
    response = make_response(request, status)
    privacy.answering(response, call)
    return response


def private_call(privacy: PrivacyHooks, *extra: str) -> tuple[CallContext, Request, str]:
    call, copy = place(privacy, invite("Privacy: id", *extra))
    return call, copy, our_record_route(copy)


# -- the callee's side of the INVITE ------------------------------------------------------------
def test_the_callee_sees_anonymous_with_the_callers_tag_and_no_identity() -> None:
    _, copy = place(hooks(), invite("Privacy: id"))
    assert copy.header("From") == f'"Anonymous" <{ANONYMOUS_URI}>;tag=a1'
    for name in ("P-Asserted-Identity", "Remote-Party-ID", "P-Preferred-Identity"):
        assert not copy.has(name)
    rr = our_record_route(copy)
    assert rr.startswith("<sip:192.0.2.10:5080;lr;pv=")
    assert rr.endswith(">")
    assert copy.header("Contact") == ALICE_CONTACT  # the Contact user is kept by default
    copy.remove_header("contact")
    copy.remove_header("record-route")  # ours sealed, the LB's an opaque token
    assert "alice" not in copy.serialize().decode().lower()


def test_contact_user_is_hidden_when_configured() -> None:
    _, copy = place(hooks(hide_contact_user=True), invite("Privacy: id"))
    assert copy.header("Contact") == "<sip:anonymous@198.51.100.7:5062>"
    assert "alice" not in copy.serialize().decode().lower().replace("token-alice", "")


def test_cancel_built_from_the_forwarded_invite_is_anonymous() -> None:
    _, copy = place(hooks(), invite("Privacy: id"))
    cancel = make_cancel(copy)
    assert cancel.header("From") == f'"Anonymous" <{ANONYMOUS_URI}>;tag=a1'


@pytest.mark.parametrize(
    ("privacy_header", "hide", "hidden"),
    [
        ("Privacy: id", None, True),
        ("Privacy: header", None, True),
        ("Privacy: none", None, False),
        ("", None, False),
        ("", True, True),  # the policy (clir) asked
        ("Privacy: id", False, False),  # the policy overrules the header
    ],
)
def test_what_triggers_privacy(privacy_header: str, hide: bool | None, hidden: bool) -> None:
    extra = (privacy_header,) if privacy_header else ()
    _, copy = place(hooks(), invite(*extra), hide=hide)
    assert (copy.from_.uri_text == ANONYMOUS_URI) is hidden
    assert (f";{ROUTE_PARAM}=" in our_record_route(copy)) is hidden


@pytest.mark.parametrize(
    ("privacy_header", "asked"),
    [
        ("", False),
        ("Privacy: id", True),
        ("Privacy: ID", True),
        ("Privacy: user;critical", True),
        ("Privacy: none", False),
        ("Privacy: session", False),  # a level the proxy does not provide
    ],
)
@pytest.mark.parametrize("hide", [None, True, False])
@pytest.mark.parametrize("in_dialog", [False, True])
def test_hides_is_the_policy_else_the_privacy_header_for_new_requests_only(
    privacy_header: str, asked: bool, hide: bool | None, in_dialog: bool
) -> None:
    """``hides`` reads the dialog and the header without CallContext.in_dialog and, for a
    request without Privacy, without sip.privacy: the same answer as through them."""
    request = invite(*((privacy_header,) if privacy_header else ()))
    if in_dialog:
        request.set_header("To", "<sip:bob@example.com>;tag=b1")
    call = context(request)
    call.hide_caller = hide
    expected = not in_dialog and (hide if hide is not None else asked)
    assert PrivacyHooks.hides(call) is expected
    reference = not call.in_dialog and (hide if hide is not None else privacy_requested(request))
    assert reference is expected


def test_a_caller_without_privacy_is_untouched_byte_for_byte() -> None:
    privacy = hooks(hide_contact_user=True)
    request = invite()
    plain_call = context(request.copy())
    expected, _ = forward_copy(request, Target(BOB), record_route=OURS)
    call, copy = place(privacy, request)
    assert copy.serialize() == expected.serialize()
    assert privacy.record_route(plain_call, OURS) == OURS
    ringing = callee_answers(copy, 180)
    before = ringing.serialize()
    privacy.answering(ringing, call)
    assert ringing.serialize() == before


@pytest.mark.parametrize(
    ("target", "trusted"),
    [
        ("sip:4312345@10.1.0.1:5060", True),  # LCR gateway flagged trusted
        ("sip:4312345@10.1.0.1", True),  # port 5060 by default
        ("sip:4312345@10.1.0.1:5070", False),  # another port: not that gateway
        ("sip:4312345@10.1.0.2:5060", False),  # a gateway not flagged
        ("sip:4312345@203.0.113.5:5099", True),  # [proxy] trusted_peers, any port
        (BOB, False),
    ],
)
def test_trusted_next_hop_gets_asserted_identity_with_privacy_id(
    target: str, trusted: bool
) -> None:
    _, copy = place(hooks(), invite("Privacy: id"), target=target)
    assert copy.from_.uri_text == ANONYMOUS_URI  # the From is hidden from everyone
    if trusted:
        assert copy.header_lines("p-asserted-identity") == ["<sip:alice@example.com>"]
        assert copy.header("Privacy") == "id"
    else:
        assert not copy.has("P-Asserted-Identity")


class FromTrustedPeer(NoServices):
    def is_trusted_peer(self, host: str) -> bool:
        return True


@pytest.mark.parametrize("from_trusted_peer", [False, True])
def test_an_identity_asserted_by_a_phone_is_not_passed_on(from_trusted_peer: bool) -> None:
    request = invite("Privacy: id")
    request.set_header("P-Asserted-Identity", "<sip:ceo@example.com>")  # says the phone
    call = CallContext(request, PEER, FromTrustedPeer() if from_trusted_peer else NoServices())
    privacy = hooks()
    copy, _ = forward_copy(
        request, Target("sip:4312345@10.1.0.1"), record_route=privacy.record_route(call, OURS)
    )
    privacy.forwarding(copy, call)
    wanted = "<sip:ceo@example.com>" if from_trusted_peer else "<sip:alice@example.com>"
    assert copy.header_lines("p-asserted-identity") == [wanted]


def test_trusted_gateways_follow_lcr_reloads() -> None:
    rows: list[tuple[Gateway, ...]] = [()]
    trusted = TrustedHops((), lambda: rows[0])
    uri = parse_uri("sip:4312345@10.1.0.1")
    assert not trusted.trusts(uri)
    rows[0] = GATEWAYS
    assert trusted.trusts(uri)


# -- responses to the caller -------------------------------------------------------------------
@pytest.mark.parametrize("status", [180, 200, 486])
def test_callees_responses_reach_the_caller_with_its_own_from(status: int) -> None:
    privacy = hooks()
    call, copy = place(privacy, invite("Privacy: id"))
    response = callee_answers(copy, status)
    assert response.from_.uri_text == ANONYMOUS_URI
    privacy.answering(response, call)
    assert response.header("From") == ALICE_FROM


@pytest.mark.parametrize(("status", "reason"), [(487, "Request Terminated"), (408, None)])
def test_responses_the_proxy_makes_carry_the_callers_from(status: int, reason: str | None) -> None:
    privacy = hooks()
    call, _ = place(privacy, invite("Privacy: id"))
    response = make_response(call.request, status, reason, to_tag="p1")
    privacy.answering(response, call)
    assert response.header("From") == ALICE_FROM


# -- the dialog, at another proxy of the pool ---------------------------------------------------
@pytest.mark.parametrize("method", ["ACK", "INVITE", "BYE"])
def test_requests_of_the_caller_reach_the_callee_anonymous_at_any_proxy(method: str) -> None:
    _, _, our_rr = private_call(hooks(hide_contact_user=True))
    other = hooks(hide_contact_user=True)  # proxy B: same cluster secret, never saw the call
    request = from_caller(method, our_rr)
    if method == "ACK":  # a 2xx ACK: forwarded without state
        copy = request.copy()
        ours = take_our_route(copy, PROXY_B)
        assert ours is not None
        other.forwarding_ack(copy, ours)
    else:
        copy = forwarded(other, request, PROXY_B)
        assert answered(other, request, PROXY_B, 200).header("From") == ALICE_FROM
    assert copy.header("From") == f'"Anonymous" <{ANONYMOUS_URI}>;tag=a1'
    assert copy.header("Contact") == "<sip:anonymous@198.51.100.7:5062>"
    assert not copy.has("Route")  # ours removed; the callee is reached at its Contact


@pytest.mark.parametrize("method", ["BYE", "INVITE"])
def test_requests_of_the_callee_reach_the_caller_with_its_identity(method: str) -> None:
    _, _, our_rr = private_call(hooks(hide_contact_user=True))
    other = hooks(hide_contact_user=True)
    request = from_callee(method, our_rr, uri="sip:anonymous@198.51.100.7:5062")
    copy = forwarded(other, request, PROXY_B)
    assert copy.header("To") == ALICE_FROM
    assert copy.uri_text == "sip:alice@198.51.100.7:5062"  # the Contact user back
    assert copy.header_values("route") == [LB_CALLER]
    # the caller's answer goes back to the callee anonymous again
    ok = make_response(copy, 200, headers=[("Contact", ALICE_CONTACT)])
    other.answering(ok, context(request.copy(), PROXY_B))  # the call of ``request``
    assert ok.header("To") == f'"Anonymous" <{ANONYMOUS_URI}>;tag=a1'
    assert ok.header("Contact") == "<sip:anonymous@198.51.100.7:5062>"


def test_a_callee_cannot_steer_the_callers_identity_to_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, _, our_rr = private_call(hooks())
    other = hooks()
    # the LB's Route toward the caller dropped, the Request-URI pointing at the callee
    request = from_callee("BYE", our_rr, uri="sip:spy@10.0.0.2:5070", after="")
    copy = forwarded(other, request, PROXY_B)
    assert copy.to.uri_text == ANONYMOUS_URI
    assert "alice" not in copy.serialize().decode().lower()
    assert other.not_restored == 1
    assert "not restored" in caplog.text


def test_a_dialog_reached_without_lb_restores_toward_the_callers_contact() -> None:
    privacy = hooks(hide_contact_user=True)
    request = invite("Privacy: id")
    request.remove_header("record-route")  # the caller reached the proxy directly
    _, copy = place(privacy, request)
    bye = from_callee("BYE", our_record_route(copy), "sip:anonymous@198.51.100.7:5062", "")
    relayed = forwarded(privacy, bye, PROXY_A)
    assert relayed.header("To") == ALICE_FROM
    assert relayed.uri_text == "sip:alice@198.51.100.7:5062"


def test_a_proxy_outside_the_pool_does_not_treat_the_route_as_its_own() -> None:
    _, _, our_rr = private_call(hooks())
    stranger = OwnAddresses.build([("192.0.2.99", 5080)])
    assert take_our_route(from_caller("BYE", our_rr), stranger) is None


# -- values that do not open -------------------------------------------------------------------
def tampered(our_rr: str) -> str:
    start = our_rr.index("pv=") + 3
    flipped = "A" if our_rr[start + 20] != "A" else "B"
    return our_rr[: start + 20] + flipped + our_rr[start + 21 :]


def test_a_tampered_value_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    _, _, our_rr = private_call(hooks())
    other = hooks()
    caplog.set_level(logging.WARNING, logger="sipfleet.privacy")
    bye = from_callee("BYE", tampered(our_rr), uri="sip:alice@198.51.100.7:5062")
    copy = forwarded(other, bye, PROXY_B)
    assert copy.to.uri_text == ANONYMOUS_URI  # nothing restored
    assert other.refused == 1
    assert "ignored" in caplog.text
    assert CALL_ID in caplog.text
    reinvite = from_caller("INVITE", tampered(our_rr))
    copy = forwarded(other, reinvite, PROXY_B)
    assert copy.header("From") == ALICE_FROM  # not touched: nothing to hide it with
    assert other.refused == 2
    assert caplog.text.count("ignored") == 1  # rate-limited


def test_a_value_sealed_with_another_secret_or_for_another_call_is_ignored() -> None:
    foreign = PrivacyHooks(PrivacySeal(b"another-cluster"))
    _, _, our_rr = private_call(foreign)
    ours = hooks()
    copy = forwarded(ours, from_callee("BYE", our_rr), PROXY_B)
    assert copy.to.uri_text == ANONYMOUS_URI
    _, _, genuine = private_call(ours)
    moved = from_callee("BYE", genuine).copy()
    moved.set_header("Call-ID", "another-call")
    copy = forwarded(ours, moved, PROXY_B)
    assert copy.to.uri_text == ANONYMOUS_URI
    assert ours.refused == 2


def test_requests_without_our_value_are_left_alone() -> None:
    privacy = hooks()
    bye = from_callee("BYE", OURS)
    before = bye.copy().serialize()
    copy = forwarded(privacy, bye, PROXY_A)
    assert copy.header("To") == f'"Anonymous" <{ANONYMOUS_URI}>;tag=a1'
    assert privacy.refused == 0
    assert b"Anonymous" in before
