"""Typed accessors of parsed messages: names, compact forms, lists, folding, bad values."""

from __future__ import annotations

import pytest

from sipfleet.sip import Message, ParseError, Request, Response, SipUri, parse_message
from sipfleet.sip.message import index_of
from tests.sip.corpus import BYE, COMPACT, INVITE, REGISTER, RESPONSE_180, sip

BASE = """\
OPTIONS sip:carol@chicago.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877
Max-Forwards: 70
To: <sip:carol@chicago.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710
CSeq: 63104 OPTIONS
"""


def request(extra: str = "", base: str = BASE) -> Request:
    message = parse_message(sip(base + extra))
    assert isinstance(message, Request)
    return message


def test_request_start_line_and_routing_headers() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.is_request
    assert msg.method == "INVITE"
    assert msg.uri_text == "sip:bob@biloxi.example.com"
    assert isinstance(msg.uri, SipUri)
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == (314159, "INVITE")
    assert str(msg.cseq) == "314159 INVITE"
    assert msg.max_forwards == 70
    assert [str(r.uri) for r in msg.routes] == [
        "sip:lb.example.com;lr",
        "sip:proxy1.example.com;lr",
    ]
    assert msg.content_type == "application/sdp"
    assert msg.content_length == len(msg.body)
    assert msg.supported == ["replaces", "timer", "100rel"]
    assert msg.body.startswith(b"v=0\r\n")


def test_response_start_line() -> None:
    msg = parse_message(RESPONSE_180)
    assert isinstance(msg, Response)
    assert not msg.is_request
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.is_provisional
    assert not msg.is_final
    assert not msg.is_success
    assert [via.host for via in msg.vias] == ["proxy1.example.com", "pc33.atlanta.example.com"]
    assert [str(rr.uri) for rr in msg.record_routes] == ["sip:proxy1.example.com;lr"]


def test_header_names_are_case_insensitive() -> None:
    msg = request("X-Custom: one\n")
    for name in ("call-id", "CALL-ID", "Call-Id", "i", "I"):
        assert msg.has(name)
        assert msg.header(name) == "a84b4c76e66710"
    assert msg.header("x-CUSTOM") == "one"


def test_compact_forms() -> None:
    msg = parse_message(COMPACT)
    assert msg.top_via.transport == "TCP"
    assert msg.from_.tag == "49583"
    assert str(msg.to.uri) == "sip:user2@domain.example"
    assert msg.call_id == "asd88asd77a@1.2.3.4"
    assert msg.content_type == "text/plain"
    assert msg.header("content-type") == "text/plain"
    assert msg.body == b"Watson, come here."


def test_compact_and_long_forms_of_one_header_merge_in_order() -> None:
    msg = request("m: <sip:a@h1>\nContact: <sip:b@h2>\nM: <sip:c@h3>\n")
    assert [c.sip_uri.user for c in msg.contacts] == ["a", "b", "c"]
    assert msg.header_lines("contact") == ["<sip:a@h1>", "<sip:b@h2>", "<sip:c@h3>"]


def test_absent_headers() -> None:
    msg = request()
    assert msg.header("subject") is None
    assert msg.header_lines("subject") == []
    assert msg.header_values("route") == []
    assert not msg.has("route")
    assert msg.routes == []
    assert msg.top_route is None
    assert msg.contacts == []
    assert msg.expires is None
    assert msg.content_type is None
    assert msg.require == []
    assert msg.authorization == []


def test_empty_header_value() -> None:
    msg = request("Subject:\nX-Empty:   \n")
    assert msg.header("subject") == ""
    assert msg.header("x-empty") == ""
    assert msg.header_values("x-empty") == []


def test_list_headers_split_on_commas_outside_quotes_and_angles() -> None:
    msg = request(
        'Contact: "Doe, John" <sip:john,doe@h1;a=1>;q=0.5, <sip:x@h2>\n'
        'X-Quoted: "a,b", c ,, d\n'
        "Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\n"
        "Route: <sip:p3.example.com;lr>\n"
    )
    assert [c.display_name for c in msg.contacts] == ["Doe, John", None]
    assert msg.contacts[0].sip_uri.user == "john,doe"
    assert msg.contacts[0].params == {"q": "0.5"}
    assert msg.header_values("x-quoted") == ['"a,b"', "c", "d"]
    assert [r.sip_uri.host for r in msg.routes] == [
        "p1.example.com",
        "p2.example.com",
        "p3.example.com",
    ]
    assert msg.header_lines("route") == [
        "<sip:p1.example.com;lr>,<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]


def test_escaped_quote_does_not_end_a_quoted_string_when_splitting() -> None:
    msg = request('Contact: "say \\"hi, there\\"" <sip:a@h1>, <sip:b@h2>\n')
    assert [c.sip_uri.user for c in msg.contacts] == ["a", "b"]
    assert msg.contacts[0].display_name == 'say "hi, there"'


def test_unterminated_quote_in_a_list_header_is_a_parse_error() -> None:
    msg = request('Contact: "oops <sip:a@h1>, <sip:b@h2>\n')
    with pytest.raises(ParseError):
        msg.contacts  # noqa: B018


def test_folded_lines_are_joined_for_reading_and_kept_for_writing() -> None:
    data = sip(BASE + "Subject: I know you're there,\n   pick up the phone\n\tand talk to me!\n")
    msg = parse_message(data)
    assert msg.header("subject") == "I know you're there, pick up the phone and talk to me!"
    assert msg.serialize() == data
    folded_via = sip(
        BASE.replace(
            "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877",
            "Via: SIP/2.0/UDP pc33.atlanta.example.com\n ;branch=z9hG4bKhjhs8ass877,\n"
            " SIP/2.0/TCP p2.example.com;branch=z9hG4bK2",
        )
    )
    msg = parse_message(folded_via)
    assert [v.branch for v in msg.vias] == ["z9hG4bKhjhs8ass877", "z9hG4bK2"]


def test_a_continuation_line_before_any_header_is_a_parse_error() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\n folded: nothing\r\n" + sip(BASE).split(b"\r\n", 1)[1]
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == 400
    assert "Continuation" in info.value.reason
    assert info.value.message is not None


@pytest.mark.parametrize(
    ("header", "accessor"),
    [
        ("From: <sip:x@y>;tag=2", "from_"),
        ("To: <sip:x@y>", "to"),
        ("Call-ID: other", "call_id"),
        ("i: other", "call_id"),
        ("CSeq: 2 OPTIONS", "cseq"),
        ("Max-Forwards: 5", "max_forwards"),
        ("Expires: 5", "expires"),
        ("Content-Type: text/plain", "content_type"),
    ],
)
def test_duplicate_single_headers_are_400(header: str, accessor: str) -> None:
    base = BASE + "Expires: 60\nContent-Type: application/sdp\n"
    msg = request(header + "\n", base)
    with pytest.raises(ParseError) as info:
        getattr(msg, accessor)
    assert info.value.status == 400
    assert "Multiple" in info.value.reason


def test_two_content_lengths_reject_the_datagram() -> None:
    data = sip(BASE + "Content-Length: 0\n")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == 400
    assert info.value.message is not None


@pytest.mark.parametrize(
    "value",
    ["<sip:a@b>, <sip:c@d>", "sip:a@b, sip:c@d", '"A" <sip:a@b>;tag=1, "C" <sip:c@d>'],
)
def test_two_values_in_from_or_to_are_400(value: str) -> None:
    msg = request(base=BASE.replace("To: <sip:carol@chicago.example.com>", f"To: {value}"))
    with pytest.raises(ParseError) as info:
        msg.to  # noqa: B018
    assert "Multiple values in To" in info.value.reason


@pytest.mark.parametrize(
    ("line", "accessor"),
    [
        ("CSeq: 63104 OPTIONS", "cseq"),
        ("Call-ID: a84b4c76e66710", "call_id"),
        ("From: Alice <sip:alice@atlanta.example.com>;tag=1928301774", "from_"),
        ("To: <sip:carol@chicago.example.com>", "to"),
        ("Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877", "top_via"),
    ],
)
def test_missing_mandatory_headers(line: str, accessor: str) -> None:
    msg = request(base=BASE.replace(line + "\n", ""))
    with pytest.raises(ParseError) as info:
        getattr(msg, accessor)
    assert "Missing" in info.value.reason


@pytest.mark.parametrize(
    ("line", "accessor"),
    [
        ("CSeq: 1", "cseq"),
        ("CSeq: x OPTIONS", "cseq"),
        ("CSeq: 1 OPT IONS", "cseq"),
        ("CSeq: -1 OPTIONS", "cseq"),
        ("CSeq: 2147483648 OPTIONS", "cseq"),
        ("Call-ID: has space", "call_id"),
        ("Call-ID:", "call_id"),
        ("Max-Forwards: 256", "max_forwards"),
        ("Max-Forwards: -1", "max_forwards"),
        ("Max-Forwards: ten", "max_forwards"),
        ("Max-Forwards: ²", "max_forwards"),
        ("Expires: 4294967296", "expires"),
        ("Expires: soon", "expires"),
    ],
)
def test_bad_scalar_values_are_400(line: str, accessor: str) -> None:
    name = line.split(":")[0]
    kept = "\n".join(x for x in BASE.splitlines() if not x.startswith(name + ":")) + "\n"
    msg = request(line + "\n", kept)
    with pytest.raises(ParseError) as info:
        getattr(msg, accessor)
    assert info.value.status == 400


def test_scalar_values_with_leading_zeros_and_limits() -> None:
    msg = request(
        "Expires: 4294967295\n",
        BASE.replace("Max-Forwards: 70", "Max-Forwards: 0255").replace("63104", "2147483647"),
    )
    assert msg.max_forwards == 255
    assert msg.expires == 4294967295
    assert msg.cseq.seq == 2**31 - 1


def test_contacts_params_expires_q_and_star() -> None:
    msg = parse_message(REGISTER)
    (contact,) = msg.contacts
    assert contact.params["expires"] == "3600"
    assert contact.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    assert contact.params["reg-id"] == "1"
    assert not msg.contact_is_star
    assert msg.expires == 7200
    star = request("Contact: *\nExpires: 0\n")
    assert star.contact_is_star
    assert star.contacts == []
    mixed = request("Contact: *\nContact: <sip:a@b>\n")
    with pytest.raises(ParseError):
        mixed.contacts  # noqa: B018


def test_top_route_parses_only_the_first_route() -> None:
    msg = request("Route: <sip:p1.example.com;lr>, <sip:bad uri>\n")
    top = msg.top_route
    assert top is not None
    assert top.sip_uri.host == "p1.example.com"
    with pytest.raises(ParseError):
        msg.routes  # noqa: B018


def test_paths_and_record_routes() -> None:
    msg = request("Path: <sip:lb1.example.com;lr;ob>\nRecord-Route: <sip:p.example.com;lr>\n")
    assert [p.sip_uri.params for p in msg.paths] == [{"lr": None, "ob": None}]
    assert [rr.sip_uri.host for rr in msg.record_routes] == ["p.example.com"]


def test_option_tag_headers() -> None:
    msg = request(
        "Require: 100rel, Timer\nProxy-Require: sec-agree\nk: path, outbound\nUnsupported: foo\n"
    )
    assert msg.require == ["100rel", "timer"]
    assert msg.proxy_require == ["sec-agree"]
    assert msg.supported == ["path", "outbound"]
    assert msg.unsupported == ["foo"]


def test_authorization_headers() -> None:
    msg = parse_message(REGISTER)
    (credentials,) = msg.authorization
    assert credentials.is_digest
    assert credentials.username == "bob"
    assert credentials.realm == "biloxi.example.com"
    assert credentials.get("qop") == "auth"
    assert credentials.get("nc") == "00000001"
    assert msg.proxy_authorization == []
    challenge = request(
        'WWW-Authenticate: Digest realm="a.example.com", nonce="n1", qop="auth,auth-int"\n'
        'WWW-Authenticate: Digest realm="b.example.com", nonce="n2", algorithm=SHA-256\n'
        'Proxy-Authenticate: Digest realm="p.example.com", nonce="n3"\n'
    )
    assert [c.realm for c in challenge.www_authenticate] == ["a.example.com", "b.example.com"]
    assert challenge.www_authenticate[0].get("qop") == "auth,auth-int"
    assert challenge.www_authenticate[1].algorithm == "SHA-256"
    assert [c.nonce for c in challenge.proxy_authenticate] == ["n3"]


def test_request_uri_is_parsed_lazily_with_416_for_other_schemes() -> None:
    msg = parse_message(sip(BASE.replace("sip:carol@chicago.example.com SIP", "mailto:c@d SIP")))
    assert isinstance(msg, Request)
    assert msg.uri_text == "mailto:c@d"
    with pytest.raises(ParseError) as info:
        msg.uri  # noqa: B018
    assert info.value.status == 416


def test_accessors_are_cached() -> None:
    msg = parse_message(BYE)
    assert msg.vias is msg.vias
    assert msg.from_ is msg.from_
    assert msg.cseq is msg.cseq


def test_lower_case_sip_version_is_accepted() -> None:
    response = parse_message(RESPONSE_180.replace(b"SIP/2.0 180", b"sip/2.0 180", 1))
    assert isinstance(response, Response)
    assert response.status == 180
    req = parse_message(INVITE.replace(b" SIP/2.0\r\n", b" sip/2.0\r\n", 1))
    assert isinstance(req, Request)
    assert req.serialize().startswith(b"INVITE sip:bob@biloxi.example.com sip/2.0\r\n")


def test_messages_have_a_useful_repr() -> None:
    assert repr(parse_message(INVITE)) == "<Request INVITE sip:bob@biloxi.example.com>"
    assert repr(parse_message(RESPONSE_180)) == "<Response 180 Ringing>"
    msg: Message = parse_message(BYE)
    assert msg.is_request


@pytest.mark.parametrize(
    "route",
    [
        "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        "<sip:a,b@p1.example.com;lr>,<sip:p2.example.com>",
        '<sip:p1.example.com;lr>;x="a,b", <sip:p2.example.com>',
        "  <sip:p1.example.com;lr>  ,<sip:p2.example.com>",
        "sip:p1.example.com;lr, <sip:p2.example.com>",
        "<sip:p1.example.com;lr>;k=v",
    ],
)
def test_top_route_agrees_with_the_full_route_list(route: str) -> None:
    top = request(f"Route: {route}\n").top_route
    assert top is not None
    assert str(top) == str(request(f"Route: {route}\n").routes[0])
    assert top.params == request(f"Route: {route}\n").routes[0].params


def test_index_of_is_the_first_position_or_minus_one() -> None:
    keys = ["via", "route", "via", "to"]
    assert index_of(keys, "via") == 0
    assert index_of(keys, "to") == 3
    assert index_of(keys, "expires") == -1
    assert index_of([], "via") == -1


def test_absent_headers_read_as_none_and_present_ones_after_others_are_found() -> None:
    msg = request(base=BASE.replace("Max-Forwards: 70\n", ""))
    assert msg.max_forwards is None
    assert msg.expires is None
    assert msg.content_type is None
    assert msg.first_value("route") is None
    assert msg.header("expires") is None
    late = request("Subject: x\nExpires: 30\nRoute: <sip:a;lr>, <sip:b;lr>\n")
    assert late.expires == 30
    assert late.first_value("route") == "<sip:a;lr>"
