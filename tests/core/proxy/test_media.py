"""The proxy's media decisions (``core/proxy/media.py``), without I/O: which calls want a
relay, whose SDP is an offer or an answer, and the relay's name in our Record-Route."""

from __future__ import annotations

from typing import cast

import pytest

from sipfleet.core.proxy.media import (
    ack_turn,
    caller_behind_nat,
    relay_of,
    request_turn,
    response_turn,
    sdp_addresses,
    target_behind_nat,
    wants_relay,
    with_relay,
)
from sipfleet.core.proxy.targets import ForkPlan, Target
from sipfleet.routing.api import CallContext, CallServices
from sipfleet.sip import SipUri
from sipfleet.sip.uri import parse_uri
from sipfleet.transport.base import Peer
from tests.core.proxy.messages import request, response_to

PUBLIC_PHONE = "198.51.100.7"


def sdp(address: str) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\n"
    ).encode()


def context(media: str | None = None, contact: str = PUBLIC_PHONE) -> CallContext:
    invite = request(extra=(f"Contact: <sip:alice@{contact}:5062>",))
    if media is not None:
        invite.set_body(sdp(media), "application/sdp")
    peer = Peer("udp", PUBLIC_PHONE, 5062, "192.0.2.1", 5060)
    return CallContext(invite, peer, cast(CallServices, object()))


PUBLIC_CALLEE = ForkPlan.single(Target("sip:bob@203.0.113.5:5070"))


@pytest.mark.parametrize(
    ("media", "contact", "behind"),
    [
        (PUBLIC_PHONE, PUBLIC_PHONE, False),  # media where its signalling comes from
        ("10.0.1.2", PUBLIC_PHONE, True),  # a private address in the SDP
        ("203.0.113.99", PUBLIC_PHONE, True),  # media elsewhere than its signalling
        (None, "192.168.1.20", True),  # no SDP (late offer), a private Contact
        (None, PUBLIC_PHONE, False),
    ],
)
def test_the_caller_is_behind_nat_by_its_sdp_or_contact(
    media: str | None, contact: str, behind: bool
) -> None:
    assert caller_behind_nat(context(media, contact)) is behind


@pytest.mark.parametrize(
    ("target", "behind"),
    [
        (Target("sip:bob@203.0.113.5:5070"), False),
        (Target("sip:bob@10.0.2.2:5060", routes=("<sip:lb;lr>",)), True),  # private Contact
        (Target("sip:bob@203.0.113.5:5070", received="sip:203.0.113.9:4021"), True),
        (Target(None), False),  # the request's own URI: a trunk or a domain
    ],
)
def test_a_callee_is_behind_nat_by_its_binding(target: Target, behind: bool) -> None:
    assert target_behind_nat(target) is behind


def test_the_mode_decides_unless_the_policy_did() -> None:
    public = context(PUBLIC_PHONE)
    natted = ForkPlan.single(Target("sip:bob@10.0.2.2:5060"))
    assert not wants_relay("nat", public, PUBLIC_CALLEE)
    assert wants_relay("nat", public, natted)
    assert wants_relay("always", public, PUBLIC_CALLEE)
    assert not wants_relay("never", public, natted)
    public.relay_media = True
    assert wants_relay("never", public, PUBLIC_CALLEE)
    public.relay_media = False
    assert not wants_relay("always", public, natted)


def test_sdp_connection_addresses_session_and_media_level() -> None:
    body = sdp("10.0.1.2") + b"c=IN IP4 224.2.1.1/127\r\n"
    assert sdp_addresses(body) == ["10.0.1.2", "224.2.1.1"]


def test_offer_answer_turns_name_the_offerer_as_from_tag() -> None:
    invite = request()
    invite.set_body(sdp("10.0.1.2"), "application/sdp")
    answer = response_to(invite, 200, to_tag="b1")
    assert (request_turn(invite).command, request_turn(invite).from_tag) == ("offer", "a1")
    turn = response_turn(answer, invite)
    assert (turn.command, turn.from_tag, turn.to_tag) == ("answer", "a1", "b1")
    late = request()  # no SDP: the 200's SDP is the callee's offer, the ACK answers it
    turn = response_turn(answer, late)
    assert (turn.command, turn.from_tag, turn.to_tag) == ("offer", "b1", "a1")
    ack = request("ACK", to_tag="b1")
    turn = ack_turn(ack)
    assert (turn.command, turn.from_tag, turn.to_tag) == ("answer", "b1", "a1")


def test_the_relay_rides_in_our_record_route() -> None:
    stamped = with_relay("<sip:192.0.2.1:5060;lr;dt=abc>", "[::1]:2223")
    uri = parse_uri(stamped.strip("<>"))
    assert isinstance(uri, SipUri)
    assert relay_of(uri) == "[::1]:2223"
    assert relay_of(None) is None
    plain = parse_uri("sip:192.0.2.1:5060;lr")
    assert isinstance(plain, SipUri)
    assert relay_of(plain) is None
