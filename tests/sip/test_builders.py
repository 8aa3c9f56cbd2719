"""Messages built from messages: responses (§8.2.6), CANCEL (§9.1), ACK for a failure
(§17.1.1.3) and the stateless branch (§16.11)."""

from __future__ import annotations

import pytest

from sipfleet.sip import ParseError, Request, Response, parse_message, validate_request
from sipfleet.sip.builders import (
    make_ack_for_failure,
    make_cancel,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    stateless_branch,
)
from sipfleet.sip.via import BRANCH_COOKIE
from tests.sip.corpus import INVITE, REGISTER, sip


def request(data: bytes = INVITE) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def reparse(response: Response) -> Response:
    message = parse_message(response.serialize())
    assert isinstance(message, Response)
    return message


TWO_VIAS = INVITE.replace(
    b"Via: SIP/2.0/UDP pc33",
    b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1, SIP/2.0/TCP p2.example.com"
    b";branch=z9hG4bKp2\r\nTimestamp: 54\r\nVia: SIP/2.0/UDP pc33",
)


def test_response_copies_via_from_to_call_id_cseq_and_adds_a_to_tag() -> None:
    invite = request(TWO_VIAS)
    response = reparse(make_response(invite, 486, to_tag="a6c85cf"))
    assert (response.status, response.reason) == (486, "Busy Here")
    assert response.header_lines("via") == invite.header_lines("via")
    assert [v.branch for v in response.vias] == ["z9hG4bKp1", "z9hG4bKp2", "z9hG4bK776asdhds"]
    assert response.header("from") == invite.header("from")
    assert response.to.tag == "a6c85cf"
    assert response.to.uri_text == invite.to.uri_text
    assert response.call_id == invite.call_id
    assert response.cseq == invite.cseq
    assert response.content_length == 0
    for absent in ("route", "contact", "max-forwards", "timestamp", "content-type", "allow"):
        assert not response.has(absent)


def test_100_trying_gets_no_to_tag_but_keeps_the_timestamp() -> None:
    trying = reparse(make_response(request(TWO_VIAS), 100, to_tag="x"))
    assert trying.reason == "Trying"
    assert trying.to.tag is None
    assert trying.header("timestamp") == "54"


def test_an_existing_to_tag_is_kept() -> None:
    bye = request(
        sip(
            "BYE sip:a@h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n"
            "From: <sip:b@h>;tag=1\nTo: <sip:a@h> ; TAG=orig\nCall-ID: c\nCSeq: 2 BYE\n"
        )
    )
    response = reparse(make_response(bye, 200, to_tag="new"))
    assert response.to.tag == "orig"


def test_extra_headers_body_and_reason() -> None:
    response = make_response(
        request(REGISTER),
        200,
        "Registered",
        to_tag="t",
        headers=[("Contact", "<sip:bob@192.0.2.4:5060>;expires=3600"), ("Date", "x")],
        body=b"hi",
    )
    again = reparse(response)
    assert again.reason == "Registered"
    assert [c.params["expires"] for c in again.contacts] == ["3600"]
    assert again.body == b"hi"
    assert again.content_length == 2
    assert make_response(request(), 499).reason == "Unknown"


def test_response_to_a_request_whose_headers_do_not_parse() -> None:
    broken = sip(
        "INVITE sip:bob@biloxi.example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1\n"
        'From: "unterminated <sip:a@b>;tag=1\n'
        "To: <sip:bob@biloxi.example.com\n"
        "Call-ID: has space\n"
        "CSeq: banana\n"
    )
    invite = request(broken)
    with pytest.raises(ParseError) as info:
        validate_request(invite)
    assert info.value.message is invite
    response = make_response(invite, 400, info.value.reason, to_tag="t")
    data = response.serialize()
    assert b'From: "unterminated <sip:a@b>;tag=1\r\n' in data
    assert b"To: <sip:bob@biloxi.example.com;tag=t\r\n" in data
    assert b"Call-ID: has space\r\n" in data
    assert b"CSeq: banana\r\n" in data
    assert data.startswith(b"SIP/2.0 400 ")


def test_response_keeps_folded_and_compact_lines_as_received() -> None:
    invite = request(
        sip(
            "INVITE sip:a@h SIP/2.0\nv: SIP/2.0/UDP h\n ;branch=z9hG4bK1\n"
            "f: <sip:b@h>;tag=1\nt: <sip:a@h>\ni: c\nCSeq: 1 INVITE\n"
        )
    )
    data = make_response(invite, 180, to_tag="r").serialize()
    assert b"v: SIP/2.0/UDP h\r\n ;branch=z9hG4bK1\r\n" in data
    assert b"f: <sip:b@h>;tag=1\r\n" in data
    assert b"To: <sip:a@h>;tag=r\r\n" in data
    assert reparse(make_response(invite, 180)).top_via.branch == "z9hG4bK1"


def test_cancel_copies_what_9_1_says_and_nothing_else() -> None:
    invite = request(TWO_VIAS)
    cancel = make_cancel(invite)
    again = parse_message(cancel.serialize())
    assert isinstance(again, Request)
    validate_request(again)
    assert again.method == "CANCEL"
    assert again.uri_text == invite.uri_text
    assert again.header_lines("via") == [str(invite.top_via)]
    assert again.top_via.branch == invite.top_via.branch
    assert again.header("from") == invite.header("from")
    assert again.header("to") == invite.header("to")
    assert again.call_id == invite.call_id
    assert again.cseq == (invite.cseq.seq, "CANCEL")
    assert again.header_lines("route") == invite.header_lines("route")
    assert again.max_forwards == 70
    assert again.content_length == 0
    for absent in ("contact", "content-type", "supported", "allow", "timestamp"):
        assert not again.has(absent)


def test_ack_for_a_failure_takes_the_to_tag_from_the_response() -> None:
    invite = request()
    failure = parse_message(make_response(invite, 486, to_tag="uas1").serialize())
    assert isinstance(failure, Response)
    ack = parse_message(make_ack_for_failure(invite, failure).serialize())
    assert isinstance(ack, Request)
    validate_request(ack)
    assert ack.method == "ACK"
    assert ack.uri_text == invite.uri_text
    assert ack.top_via.branch == invite.top_via.branch
    assert len(ack.vias) == 1
    assert ack.to.tag == "uas1"
    assert ack.from_.tag == invite.from_.tag
    assert ack.cseq == (invite.cseq.seq, "ACK")
    assert ack.header_lines("route") == invite.header_lines("route")
    assert ack.body == b""


def test_stateless_branch_is_stable_for_retransmissions_cancel_and_ack() -> None:
    invite = request()
    retransmission = request()
    branch = stateless_branch(invite)
    assert branch.startswith(BRANCH_COOKIE)
    assert branch == stateless_branch(retransmission)
    assert branch == stateless_branch(make_cancel(invite))
    failure = parse_message(make_response(invite, 404, to_tag="t").serialize())
    assert isinstance(failure, Response)
    assert branch == stateless_branch(make_ack_for_failure(invite, failure))


def test_stateless_branch_differs_for_a_different_request_or_salt() -> None:
    invite = request()
    other = request(INVITE.replace(b"z9hG4bK776asdhds", b"z9hG4bK776asdhdt"))
    assert stateless_branch(invite) != stateless_branch(other)
    assert stateless_branch(invite, "target-a") != stateless_branch(invite, "target-b")
    moved = request(
        INVITE.replace(b"pc33.atlanta.example.com:5060;", b"pc34.atlanta.example.com:5060;")
    )
    assert stateless_branch(invite) != stateless_branch(moved)


def test_stateless_branch_carries_the_clients_branch_behind_a_tag_of_its_sender() -> None:
    branch = stateless_branch(request(), "udp:192.0.2.7:5060")
    tag, dot, carried = branch.removeprefix(BRANCH_COOKIE + "-sf").partition(".")
    assert (dot, carried) == (".", "776asdhds")  # the client's branch after its cookie
    assert len(tag) == 12
    assert set(tag) <= set("0123456789abcdef")
    # Another sender choosing the same branch, or another target, gets another tag.
    other_sender = request(INVITE.replace(b"UDP pc33.atlanta", b"UDP pc34.atlanta"))
    assert stateless_branch(other_sender, "udp:192.0.2.7:5060") != branch
    assert stateless_branch(request(), "udp:192.0.2.8:5060") != branch


@pytest.mark.parametrize(
    "via",
    [
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK" + b"7" * 80,
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060 ; branch = z9hG4bK776asdhds",
    ],
    ids=["long", "spaced"],
)
def test_stateless_branch_hashes_a_long_or_unusually_written_branch(via: bytes) -> None:
    lines = INVITE.split(b"\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(b"Via: "))
    data = b"\r\n".join([*lines[:at], via, *lines[at + 1 :]])
    branch = stateless_branch(request(data))
    assert branch.startswith(BRANCH_COOKIE + "-sf")
    assert "." not in branch
    assert len(branch) == len(BRANCH_COOKIE + "-sf") + 20  # 10 bytes of hash in hex
    assert branch == stateless_branch(request(data))  # a retransmission
    assert branch == stateless_branch(make_cancel(request(data)))


def test_stateless_branch_for_rfc2543_requests_hashes_the_transaction() -> None:
    old = sip(
        "INVITE sip:b@h SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1\nFrom: <sip:a@h>;tag=1\n"
        "To: <sip:b@h>\nCall-ID: c1\nCSeq: 5 INVITE\n"
    )
    branch = stateless_branch(request(old))
    assert branch.startswith(BRANCH_COOKIE)
    assert branch == stateless_branch(request(old))
    assert branch == stateless_branch(make_cancel(request(old)))
    assert branch != stateless_branch(request(old.replace(b"CSeq: 5", b"CSeq: 6")))
    assert branch != stateless_branch(request(old.replace(b"Call-ID: c1", b"Call-ID: c2")))


def test_identifiers_are_fresh() -> None:
    assert new_branch().startswith(BRANCH_COOKIE)
    assert len({new_branch() for _ in range(50)}) == 50
    assert len({new_tag() for _ in range(50)}) == 50
    assert new_call_id("lb1.example.com").endswith("@lb1.example.com")


def test_tag_text_inside_a_quoted_display_name_is_not_a_tag() -> None:
    invite = request(INVITE.replace(b'To: "Bob"', b'To: "Bob;tag=no"'))
    response = reparse(make_response(invite, 180, to_tag="real"))
    assert response.to.tag == "real"
    assert response.to.display_name == "Bob;tag=no"
