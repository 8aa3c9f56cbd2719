"""The edits a proxy makes: each touches exactly its own lines, the rest stays byte for byte."""

from __future__ import annotations

from collections import Counter

import pytest

from sipfleet.sip import Address, Message, ParseError, Request, SipUri, Via, parse_message
from sipfleet.sip.uri import parse_uri
from tests.sip import rfc4475
from tests.sip.corpus import ALL, BYE, COMPACT, INVITE, REGISTER, RESPONSE_180, sip


def request(data: bytes = INVITE) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def changes(before: bytes, after: bytes) -> tuple[list[str], list[str]]:
    """Header lines removed and added (as multisets), the body compared separately."""
    head_before, _, body_before = before.partition(b"\r\n\r\n")
    head_after, _, body_after = after.partition(b"\r\n\r\n")
    assert body_before == body_after
    old = Counter(head_before.decode("latin-1").split("\r\n"))
    new = Counter(head_after.decode("latin-1").split("\r\n"))
    return sorted((old - new).elements()), sorted((new - old).elements())


def lines(data: bytes) -> list[str]:
    return data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")


@pytest.mark.parametrize("name", [*ALL, *rfc4475.VALID])
def test_unmodified_message_serializes_to_the_received_bytes(name: str) -> None:
    data = ALL.get(name) or rfc4475.VALID[name]
    message = parse_message(data)
    message.top_via.branch  # noqa: B018 - reading never changes the output
    message.from_.uri  # noqa: B018
    expected = rfc4475.DBLREQ_REGISTER if name == "dblreq" else data
    assert message.serialize() == expected
    assert bytes(message) == expected


def test_push_via_adds_one_line_above_the_others() -> None:
    msg = request()
    msg.push_via(Via("UDP", "lb1.example.com", 5060, {"branch": "z9hG4bKlb1", "rport": None}))
    after = msg.serialize()
    assert changes(INVITE, after) == (
        [],
        ["Via: SIP/2.0/UDP lb1.example.com:5060;branch=z9hG4bKlb1;rport"],
    )
    assert lines(after)[1].startswith("Via: SIP/2.0/UDP lb1.example.com")
    assert [v.host for v in parse_message(after).vias] == [
        "lb1.example.com",
        "pc33.atlanta.example.com",
    ]
    assert msg.top_via.host == "lb1.example.com"  # the cache follows the edit


def test_pop_via_removes_the_top_via_only() -> None:
    msg = parse_message(RESPONSE_180)
    popped = msg.pop_via()
    assert popped is not None
    assert popped.host == "proxy1.example.com"
    removed, added = changes(RESPONSE_180, msg.serialize())
    assert removed == [
        "Via: SIP/2.0/UDP proxy1.example.com;branch=z9hG4bK2d4790.1;received=192.0.2.3"
    ]
    assert added == []
    assert msg.top_via.host == "pc33.atlanta.example.com"


def test_pop_via_from_a_comma_separated_line_keeps_the_rest_of_it() -> None:
    data = RESPONSE_180.replace(b"received=192.0.2.3\r\nVia: ", b"received=192.0.2.3, ", 1)
    msg = parse_message(data)
    assert len(msg.vias) == 2
    msg.pop_via()
    removed, added = changes(data, msg.serialize())
    assert len(removed) == 1
    assert added == [
        "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds"
        ";rport=5060;received=198.51.100.7"
    ]


VIA_LAYOUTS = {
    "alone": "Via: SIP/2.0/UDP a:5060;branch=z9hG4bK1\nMax-Forwards: 70\n",
    "two lines": "Via: SIP/2.0/UDP a;branch=z9hG4bK1\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\n",
    "one line": "Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\n",
    "not first": "Max-Forwards: 70\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\n",
    "apart": "Via: SIP/2.0/UDP a;branch=z9hG4bK1\nMax-Forwards: 70\nv: SIP/2.0/UDP b\n",
    "empty first": "Via: \nVia: SIP/2.0/UDP a;branch=z9hG4bK1\n",
    "none": "Max-Forwards: 70\n",
}


@pytest.mark.parametrize("layout", VIA_LAYOUTS)
def test_replace_top_via_is_pop_then_push(layout: str) -> None:
    data = sip(f"OPTIONS sip:a@b SIP/2.0\n{VIA_LAYOUTS[layout]}Call-ID: x\n")
    stamped = "SIP/2.0/UDP a:5060;branch=z9hG4bK1;rport=5062;received=192.0.2.1"
    replaced, popped_and_pushed = request(data), request(data)
    if layout != "none":
        replaced.top_via  # noqa: B018 - cached, and dropped by the edit
    replaced.replace_top_via(stamped)
    popped_and_pushed.pop_first_value("via")
    popped_and_pushed.push_via(stamped)
    assert replaced.serialize() == popped_and_pushed.serialize()
    assert str(replaced.top_via) == stamped


def test_pop_via_on_a_message_without_via() -> None:
    msg = request(sip("OPTIONS sip:a@b SIP/2.0\nCall-ID: x\n"))
    assert msg.pop_via() is None
    assert msg.serialize() == sip("OPTIONS sip:a@b SIP/2.0\nCall-ID: x\n")


def test_add_record_route_goes_after_the_via_block() -> None:
    msg = request()
    msg.add_record_route(Address(SipUri("sip", None, None, "p1.example.com", None, {"lr": None})))
    after = msg.serialize()
    assert changes(INVITE, after) == ([], ["Record-Route: <sip:p1.example.com;lr>"])
    assert lines(after)[2] == "Record-Route: <sip:p1.example.com;lr>"
    msg.add_record_route("<sip:p0.example.com;lr>")  # a second one goes above the first
    assert [str(rr.uri) for rr in parse_message(msg.serialize()).record_routes] == [
        "sip:p0.example.com;lr",
        "sip:p1.example.com;lr",
    ]


def test_add_path_goes_on_top_of_existing_paths() -> None:
    msg = request(REGISTER)
    msg.add_path("<sip:lb1.example.com;lr;ob>")
    msg.add_path("<sip:lb0.example.com;lr>")
    assert changes(REGISTER, msg.serialize()) == (
        [],
        ["Path: <sip:lb0.example.com;lr>", "Path: <sip:lb1.example.com;lr;ob>"],
    )
    assert [p.sip_uri.host for p in msg.paths] == ["lb0.example.com", "lb1.example.com"]


def test_pop_route_rewrites_only_the_route_line() -> None:
    msg = request()
    popped = msg.pop_route()
    assert popped is not None
    assert str(popped.uri) == "sip:lb.example.com;lr"
    assert changes(INVITE, msg.serialize()) == (
        ["Route: <sip:lb.example.com;lr>, <sip:proxy1.example.com;lr>"],
        ["Route: <sip:proxy1.example.com;lr>"],
    )
    top = msg.top_route
    assert top is not None
    assert top.sip_uri.host == "proxy1.example.com"
    msg.pop_route()
    assert msg.top_route is None
    assert not msg.has("route")
    assert msg.pop_route() is None


def test_push_route() -> None:
    msg = request(BYE)
    msg.push_route("<sip:first.example.com;lr>")
    assert changes(BYE, msg.serialize()) == ([], ["Route: <sip:first.example.com;lr>"])
    assert [r.sip_uri.host for r in msg.routes] == ["first.example.com", "proxy1.example.com"]


def test_rewriting_the_request_uri_changes_only_the_start_line() -> None:
    msg = request()
    msg.uri = SipUri("sip", "bob", None, "192.0.2.4", 5060)
    after = msg.serialize()
    assert lines(after)[0] == "INVITE sip:bob@192.0.2.4:5060 SIP/2.0"
    assert lines(after)[1:] == lines(INVITE)[1:]
    assert msg.uri_text == "sip:bob@192.0.2.4:5060"


@pytest.mark.parametrize(("before", "after"), [("70", "69"), ("1", "0")])
def test_decrement_max_forwards_in_place(before: str, after: str) -> None:
    data = INVITE.replace(b"Max-Forwards: 70", f"Max-Forwards: {before}".encode())
    msg = request(data)
    assert msg.decrement_max_forwards() == int(after)
    assert changes(data, msg.serialize()) == (
        [f"Max-Forwards: {before}"],
        [f"Max-Forwards: {after}"],
    )
    assert lines(msg.serialize()).index(f"Max-Forwards: {after}") == 2
    assert msg.max_forwards == int(after)


def test_decrement_max_forwards_adds_70_when_absent() -> None:
    msg = request(rfc4475.INV2543)
    assert msg.decrement_max_forwards() == 70
    removed, added = changes(rfc4475.INV2543, msg.serialize())
    # A UDP message without Content-Length gets one once it is rewritten.
    assert removed == []
    assert added == ["Content-Length: 105", "Max-Forwards: 70"]


def test_add_set_and_remove_headers() -> None:
    msg = request()
    msg.add_header("X-Trace", "1")
    msg.add_header("x-trace", "2")
    msg.add_header("X-Trace", "0", top=True)
    assert msg.header_lines("x-trace") == ["0", "1", "2"]
    assert changes(INVITE, msg.serialize()) == ([], ["X-Trace: 0", "X-Trace: 1", "X-Trace: 2"])
    msg.set_header("X-TRACE", "only")
    assert msg.header_lines("x-trace") == ["only"]
    assert msg.remove_header("x-trace") == 1
    assert msg.remove_header("x-trace") == 0
    assert msg.serialize() == INVITE  # back to the original bytes


def test_set_header_replaces_in_place_and_collapses_duplicates() -> None:
    msg = request()
    msg.set_header("Supported", "path")
    after = msg.serialize()
    assert changes(INVITE, after) == (["Supported: replaces, timer, 100rel"], ["Supported: path"])
    assert lines(after).index("Supported: path") == lines(INVITE).index(
        "Supported: replaces, timer, 100rel"
    )
    data = sip("OPTIONS sip:a@b SIP/2.0\nAllow: A\nX: 1\nAllow: B\n")
    msg = request(data)
    msg.set_header("allow", "C")
    assert changes(data, msg.serialize()) == (["Allow: A", "Allow: B"], ["Allow: C"])


def test_set_header_on_a_compact_header_uses_the_long_name() -> None:
    msg = request(COMPACT)
    msg.set_header("i", "new-call-id")
    assert changes(COMPACT, msg.serialize()) == (
        ["i: asd88asd77a@1.2.3.4"],
        ["Call-ID: new-call-id"],
    )
    assert msg.call_id == "new-call-id"


def test_replace_from_and_to() -> None:
    msg = request()
    anonymous = msg.from_.replace(uri="sip:anonymous@anonymous.invalid", display='"Anonymous"')
    msg.set_from(anonymous)
    msg.set_to('"Bob" <sip:bob@biloxi.example.com>;tag=xyz')
    removed, added = changes(INVITE, msg.serialize())
    assert removed == [
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
        'To: "Bob" <sip:bob@biloxi.example.com>',
    ]
    assert added == [
        'From: "Anonymous" <sip:anonymous@anonymous.invalid>;tag=1928301774',
        'To: "Bob" <sip:bob@biloxi.example.com>;tag=xyz',
    ]
    assert msg.from_.tag == "1928301774"
    assert msg.to.tag == "xyz"


def test_set_body_updates_content_length_and_type() -> None:
    msg = request(BYE)
    msg.set_body(b"hello", "text/plain")
    after = msg.serialize()
    assert after.endswith(b"\r\n\r\nhello")
    reparsed = parse_message(after)
    assert reparsed.content_length == 5
    assert reparsed.content_type == "text/plain"
    msg.set_body(b"")
    reparsed = parse_message(msg.serialize())
    assert reparsed.content_length == 0
    assert reparsed.content_type is None
    assert reparsed.body == b""


def test_a_folded_header_survives_an_edit_elsewhere() -> None:
    data = sip(
        "OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n"
        "Subject: first part\n  second part\nCall-ID: x\n"
    )
    msg = request(data)
    msg.add_header("X-A", "1")
    assert b"Subject: first part\r\n  second part\r\n" in msg.serialize()


def test_copy_is_independent() -> None:
    original = request()
    branch_a: Message = original.copy()
    branch_b = original.copy()
    assert isinstance(branch_a, Request)
    assert isinstance(branch_b, Request)
    branch_a.uri = SipUri("sip", "bob", None, "192.0.2.1", None)
    branch_a.decrement_max_forwards()
    branch_b.uri = SipUri("sip", "bob", None, "192.0.2.2", None)
    branch_b.add_header("X-B", "1")
    assert original.serialize() == INVITE
    assert b"sip:bob@192.0.2.1 " in branch_a.serialize()
    assert b"X-B" not in branch_a.serialize()
    assert b"Max-Forwards: 69" not in branch_b.serialize()
    assert b"X-B: 1" in branch_b.serialize()


def test_all_proxy_edits_together_touch_only_their_lines() -> None:
    msg = request()
    msg.push_via("SIP/2.0/UDP lb1.example.com;branch=z9hG4bK-sf1")
    msg.decrement_max_forwards()
    msg.add_record_route("<sip:lb1.example.com;lr>")
    msg.pop_route()
    removed, added = changes(INVITE, msg.serialize())
    assert removed == [
        "Max-Forwards: 70",
        "Route: <sip:lb.example.com;lr>, <sip:proxy1.example.com;lr>",
    ]
    assert added == [
        "Max-Forwards: 69",
        "Record-Route: <sip:lb1.example.com;lr>",
        "Route: <sip:proxy1.example.com;lr>",
        "Via: SIP/2.0/UDP lb1.example.com;branch=z9hG4bK-sf1",
    ]


def test_built_request_serializes_with_content_length() -> None:
    req = Request.build(
        "OPTIONS",
        SipUri("sip", None, None, "192.0.2.9", 5060),
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKping"),
            ("From", "<sip:lb@192.0.2.1>;tag=1"),
            ("To", "<sip:192.0.2.9:5060>"),
            ("Call-ID", "ping-1"),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ],
    )
    data = req.serialize()
    assert data.startswith(b"OPTIONS sip:192.0.2.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1")
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    again = parse_message(data)
    assert again.serialize() == data
    assert again.cseq == (1, "OPTIONS")


def test_pop_route_skips_a_line_without_values() -> None:
    msg = request(sip("OPTIONS sip:a@b SIP/2.0\nRoute: ,\nRoute: <sip:p.example.com;lr>\n"))
    popped = msg.pop_route()
    assert popped is not None
    assert popped.sip_uri.host == "p.example.com"
    assert not msg.has("route")


@pytest.mark.parametrize(
    ("line", "hops"),
    [
        ("Max-Forwards: 70", 70),
        ("Max-Forwards:  7 ", 7),
        ("max-forwards: 0", 0),
        ("Max-Forwards: 070", 70),
    ],
)
def test_max_forwards_of_each_spelling(line: str, hops: int) -> None:
    msg = parse_message(
        sip(f"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n{line}\n")
    )
    assert isinstance(msg, Request)
    assert msg.max_forwards == hops


def test_two_max_forwards_lines_are_refused_even_when_both_are_usual() -> None:
    head = "OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nMax-Forwards: 70\n"
    msg = parse_message(sip(head + "Max-Forwards: 70\n"))
    with pytest.raises(ParseError, match="Multiple Max-Forwards"):
        msg.max_forwards  # noqa: B018


def test_the_start_line_goes_out_as_received_until_the_uri_changes() -> None:
    head = "OPTIONS sip:a@b sip/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nMax-Forwards: 70\n"
    msg = parse_message(sip(head))
    assert isinstance(msg, Request)
    msg.decrement_max_forwards()
    assert msg.serialize().startswith(b"OPTIONS sip:a@b sip/2.0\r\n")
    copy = msg.copy()
    copy.uri = parse_uri("sip:c@d")
    assert copy.serialize().startswith(b"OPTIONS sip:c@d sip/2.0\r\n")
    assert msg.serialize().startswith(b"OPTIONS sip:a@b sip/2.0\r\n")
    answer = parse_message(sip("SIP/2.0 200\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n"))
    answer.pop_first_value("via")
    assert answer.serialize().startswith(b"SIP/2.0 200\r\n")  # no reason phrase added
