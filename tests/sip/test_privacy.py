"""Caller privacy (sipfleet.sip.privacy): hide, seal, open, restore in both directions."""

from __future__ import annotations

import pytest

from sipfleet.sip import Request, Response, SipUri
from sipfleet.sip.builders import make_response
from sipfleet.sip.privacy import (
    ANONYMOUS_URI,
    Direction,
    HiddenIdentity,
    PrivacySeal,
    continues_toward_caller,
    direction_of,
    hide_caller,
    identity_of,
    privacy_header,
    privacy_requested,
    rewrite_in_dialog,
    rewrite_response,
)

ALICE_FROM = '"Alice Smith" <sip:alice@example.com>;tag=a-tag'
SEAL = PrivacySeal(b"cluster-secret")


def invite(*extra: tuple[str, str], from_: str = ALICE_FROM) -> Request:
    return Request.build(
        "INVITE",
        "sip:bob@example.com",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1"),
            ("From", from_),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "call-1"),
            ("CSeq", "1 INVITE"),
            *extra,
        ],
    )


def in_dialog(from_: str, to: str, method: str = "BYE") -> Request:
    return Request.build(
        method,
        "sip:peer@192.0.2.9",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-2"),
            ("From", from_),
            ("To", to),
            ("Call-ID", "call-1"),
            ("CSeq", f"2 {method}"),
        ],
    )


@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        ("id", True),
        ("header", True),
        ("id;critical", True),
        ("session", False),
        ("none", False),
        ("header;none", False),
        (None, False),
    ],
)
def test_privacy_requested(value: str | None, wanted: bool) -> None:
    extra = [("Privacy", value)] if value else []
    assert privacy_requested(invite(*extra)) is wanted


def test_callee_sees_anonymous_with_the_same_tag_and_no_identity_headers() -> None:
    request = invite(
        ("P-Asserted-Identity", "<sip:alice@example.com>"), ("Remote-Party-ID", "<sip:alice@x>")
    )
    identity = hide_caller(request, trusted_next_hop=False)
    assert str(request.from_.uri) == ANONYMOUS_URI
    assert request.from_.display_name == "Anonymous"
    assert request.from_.tag == "a-tag"
    assert not request.has("P-Asserted-Identity")
    assert not request.has("Remote-Party-ID")
    assert b"alice" not in request.serialize().lower()
    assert identity.from_value == ALICE_FROM


def test_trusted_gateway_gets_asserted_identity_with_privacy_id() -> None:
    request = invite()
    hide_caller(request, trusted_next_hop=True)
    assert request.header("P-Asserted-Identity") == "<sip:alice@example.com>"
    assert request.header("Privacy") == "id"


def test_seal_round_trip_and_binding_to_the_call() -> None:
    identity = HiddenIdentity(ALICE_FROM, "a-tag", ("<sip:alice@example.com>",))
    sealed = SEAL.seal(identity, "call-1")
    assert "alice" not in sealed.lower()
    assert SEAL.open(sealed, "call-1") == identity
    assert SEAL.open(sealed, "another-call") is None
    assert PrivacySeal(b"other").open(sealed, "call-1") is None


def test_tampered_seal_is_refused() -> None:
    sealed = SEAL.seal(HiddenIdentity(ALICE_FROM, "a-tag"), "call-1")
    for i in range(0, len(sealed) - 1, 3):
        flipped = sealed[:i] + ("A" if sealed[i] != "A" else "B") + sealed[i + 1 :]
        assert SEAL.open(flipped, "call-1") is None
    assert SEAL.open("", "call-1") is None
    assert SEAL.open("!" * 40, "call-1") is None


def test_response_to_the_caller_carries_its_own_from() -> None:
    request = invite()
    identity = hide_caller(request, trusted_next_hop=False)
    response = make_response(request, 180, to_tag="b-tag")
    assert str(response.from_.uri) == ANONYMOUS_URI
    rewrite_response(response, identity, Direction.TO_CALLEE)
    assert response.header("From") == ALICE_FROM


def test_bye_from_callee_reaches_caller_with_caller_identity_in_to() -> None:
    identity = HiddenIdentity(ALICE_FROM, "a-tag")
    bye = in_dialog("<sip:bob@example.com>;tag=b-tag", identity.anonymous_from())
    direction = direction_of(bye, identity)
    assert direction is Direction.TO_CALLER
    rewrite_in_dialog(bye, identity, direction)
    assert bye.header("To") == ALICE_FROM
    ok = make_response(bye, 200)
    rewrite_response(ok, identity, direction)
    assert str(ok.to.uri) == ANONYMOUS_URI
    assert ok.to.tag == "a-tag"


def test_reinvite_from_caller_leaves_anonymised() -> None:
    identity = HiddenIdentity(ALICE_FROM, "a-tag")
    reinvite = in_dialog(ALICE_FROM, "<sip:bob@example.com>;tag=b-tag", "INVITE")
    direction = direction_of(reinvite, identity)
    assert direction is Direction.TO_CALLEE
    rewrite_in_dialog(reinvite, identity, direction)
    assert str(reinvite.from_.uri) == ANONYMOUS_URI
    assert reinvite.from_.tag == "a-tag"


def test_request_of_another_dialog_is_not_touched() -> None:
    identity = HiddenIdentity(ALICE_FROM, "a-tag")
    other = in_dialog("<sip:carol@example.com>;tag=c", "<sip:dave@example.com>;tag=d")
    assert direction_of(other, identity) is None


def test_caller_without_privacy_is_untouched() -> None:
    request = invite()
    before = request.serialize()
    assert not privacy_requested(request)
    assert request.serialize() == before
    assert isinstance(make_response(request, 200), Response)


@pytest.mark.parametrize(
    ("value", "wanted"),
    [("id", True), ("none", False), ("session", None), (None, None), ("critical; user", True)],
)
def test_privacy_header_tells_on_off_or_nothing(value: str | None, wanted: bool | None) -> None:
    extra = [("Privacy", value)] if value else []
    assert privacy_header(invite(*extra)) is wanted


def test_identity_keeps_the_hop_toward_the_caller_and_optionally_its_contact_user() -> None:
    request = invite(
        ("Record-Route", "<sip:TOKEN@192.0.2.1:5060;lr>, <sip:10.0.0.1;lr>"),
        ("Contact", "<sip:alice@198.51.100.7:5062>"),
    )
    identity = identity_of(request, hide_contact_user=True)
    assert identity.caller_hop == "sip:TOKEN@192.0.2.1:5060;lr"
    assert identity.contact_user == "alice"
    assert identity_of(request).contact_user is None
    request.remove_header("record-route")
    assert identity_of(request).caller_hop == "sip:alice@198.51.100.7:5062"


def test_seal_carries_every_field_and_opens_the_shorter_form() -> None:
    identity = HiddenIdentity(ALICE_FROM, "a-tag", (), "alice", "sip:T@192.0.2.1;lr")
    assert SEAL.open(SEAL.seal(identity, "call-1"), "call-1") == identity
    short = HiddenIdentity(ALICE_FROM, "a-tag")
    assert SEAL.open(SEAL.seal(short, "call-1"), "call-1") == short


def test_contact_user_hidden_and_given_back_in_the_request_uri() -> None:
    request = invite(("Contact", '"Al" <sip:alice:pw@198.51.100.7:5062>;expires=60'))
    identity = hide_caller(request, False, identity_of(request, hide_contact_user=True))
    assert request.header("Contact") == '"Al" <sip:anonymous@198.51.100.7:5062>;expires=60'
    bye = in_dialog("<sip:bob@example.com>;tag=b-tag", identity.anonymous_from())
    bye.uri = SipUri("sip", "anonymous", None, "198.51.100.7", 5062)
    rewrite_in_dialog(bye, identity, Direction.TO_CALLER)
    assert bye.uri_text == "sip:alice@198.51.100.7:5062"


def test_identity_goes_only_into_requests_that_continue_toward_the_caller() -> None:
    identity = HiddenIdentity(ALICE_FROM, "a-tag", caller_hop="sip:TOK@192.0.2.1:5060;lr")
    bye = in_dialog("<sip:bob@example.com>;tag=b-tag", identity.anonymous_from())
    assert not continues_toward_caller(bye, identity)  # no Route: to the Request-URI
    bye.push_route("<sip:TOK@192.0.2.1:5060;lr>")
    assert continues_toward_caller(bye, identity)
    bye.pop_route()
    bye.push_route("<sip:OTHER@192.0.2.1:5060;lr>")  # another flow of the LB
    assert not continues_toward_caller(bye, identity)
    assert not continues_toward_caller(bye, HiddenIdentity(ALICE_FROM, "a-tag"))
