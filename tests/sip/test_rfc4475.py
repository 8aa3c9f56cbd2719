"""RFC 4475 torture tests: what the parser must accept, what it must reject, and how.

Where the RFC leaves the choice to the element (reject, or be liberal), the choice made
here is stated next to the case.
"""

from __future__ import annotations

import pytest

from sipfleet.sip import (
    AbsoluteUri,
    Message,
    ParseError,
    Request,
    Response,
    SipUri,
    StreamFramer,
    parse_message,
    validate_request,
)
from sipfleet.sip.builders import make_response, stateless_branch
from sipfleet.sip.parser import validate_response
from sipfleet.sip.uri import uri_equal
from tests.sip import rfc4475


def parse_and_validate(data: bytes) -> Message:
    message = parse_message(data)
    if isinstance(message, Request):
        validate_request(message)
    else:
        assert isinstance(message, Response)
        validate_response(message)
    return message


def touch_everything(message: Message) -> None:
    """Every typed accessor, including the lazily parsed parts, must work."""
    for via in message.vias:
        assert via.params is not None
        via.branch, via.received, via.rport  # noqa: B018
    for address in (message.from_, message.to, *message.contacts, *message.routes):
        address.uri  # noqa: B018
    for address in (*message.record_routes, *message.paths):
        address.uri  # noqa: B018
    message.call_id, message.cseq, message.max_forwards, message.expires  # noqa: B018
    message.content_length, message.content_type, message.contact_is_star  # noqa: B018
    message.require, message.proxy_require, message.supported, message.unsupported  # noqa: B018
    message.authorization, message.proxy_authorization, message.www_authenticate  # noqa: B018


# -- §3.1.1 valid messages ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(rfc4475.VALID))
def test_valid_message_parses_validates_and_round_trips(name: str) -> None:
    data = rfc4475.VALID[name]
    message = parse_and_validate(data)
    touch_everything(message)
    expected = rfc4475.DBLREQ_REGISTER if name == "dblreq" else data
    assert message.serialize() == expected
    # An edit forces re-rendering from the parsed lines: still byte-identical apart from it.
    message.add_header("X-Probe", "1")
    head, _, body = message.serialize().partition(b"\r\n\r\n")
    assert head.endswith(b"\r\nX-Probe: 1")
    assert head[: -len(b"\r\nX-Probe: 1")] + b"\r\n\r\n" + body == expected


def test_wsinv_folding_whitespace_and_leading_zeros() -> None:
    msg = parse_and_validate(rfc4475.WSINV)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    uri = msg.uri
    assert isinstance(uri, SipUri)
    assert uri.user == "vivekg"
    assert uri.host == "chair-dnrc.example.com"
    assert uri.params == {"unknownparam": None}
    assert msg.to.tag == "1918181833n"
    assert msg.to.display is None
    assert msg.from_.display == '"J Rosenberg \\\\\\""'
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert msg.content_length == 150
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.header("subject") == ""
    assert msg.header("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.header("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.content_type == "application/sdp"
    route = msg.top_route
    assert route is not None
    assert route.sip_uri.params == {
        "lr": None,
        "unknownwith": "value",
        "unknown-no-value": None,
    }
    (contact,) = msg.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert contact.sip_uri.user == "jdrosen"


def test_intmeth_wide_range_of_characters() -> None:
    msg = parse_and_validate(rfc4475.INTMETH)
    assert isinstance(msg, Request)
    assert msg.method == rfc4475.INTMETH_METHOD
    uri = msg.uri
    assert isinstance(uri, SipUri)
    assert uri.user == rfc4475.INTMETH_URI_USER
    assert uri.password == rfc4475.INTMETH_URI_PASSWORD
    assert uri.host == "example.com"
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.to.sip_uri.user == rfc4475.INTMETH_URI_USER
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.tag == "_token~1'+`*%!-."
    odd = msg.from_.params["fromparam''~+*_!.-%"]
    assert odd is not None
    assert odd.encode("latin-1").decode("utf-8") == '"работающий"'
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.cseq == (139122385, rfc4475.INTMETH_METHOD)
    assert msg.max_forwards == 255
    value = msg.header("extensionHeader-!.%*+_`'~")
    assert value is not None
    assert value.encode("latin-1").decode("utf-8") == "\ufeff大停電"


def test_esc01_escapes_are_equivalent_in_sip_uris() -> None:
    msg = parse_and_validate(rfc4475.ESC01)
    assert isinstance(msg, Request)
    uri = msg.uri
    assert isinstance(uri, SipUri)
    assert uri.user == "sips%3Auser%40example.com"
    assert uri.host == "example.net"
    assert uri == SipUri("sip", "sips:user@example.com", None, "example.net", None)
    assert msg.to.sip_uri == SipUri("sip", "user", None, "example.com", None)
    assert msg.from_.sip_uri.user == "I%20have%20spaces"
    contact = msg.contacts[0].sip_uri
    assert contact.user == "cal%6Cer"
    assert contact.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    # Unescaping is never recursive: "value%41" is not "valueA".
    assert uri_equal(
        contact,
        SipUri(
            "sip", "caller", None, "host5.example.net", None, {"lr": None, "name": "value%2541"}
        ),
    )
    assert not uri_equal(
        contact,
        SipUri("sip", "caller", None, "host5.example.net", None, {"lr": None, "name": "valueA"}),
    )


def test_escnull_escaped_nul_in_the_user_part_is_kept() -> None:
    msg = parse_and_validate(rfc4475.ESCNULL)
    assert msg.to.sip_uri.user == "null-%00-null"
    users = [contact.sip_uri.user for contact in msg.contacts]
    assert users == ["%00", "%00%00"]
    first, second = (contact.sip_uri for contact in msg.contacts)
    assert first != second  # two distinct bindings, not cut short at the NUL


def test_esc02_percent_is_not_an_escape_outside_uris() -> None:
    msg = parse_and_validate(rfc4475.ESC02)
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"
    assert msg.method != "REGISTER"
    assert msg.to.display_name == "%Z%45"
    assert msg.top_via.branch == "z9hG4bK209%fzsnel234"
    assert [c.sip_uri.user for c in msg.contacts] == ["alias1", "alias3"]
    assert msg.header("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_display_name_without_space_before_the_angle() -> None:
    msg = parse_and_validate(rfc4475.LWSDISP)
    assert msg.from_.display == "caller"
    assert msg.from_.tag == "323"


def test_longreq_long_values_and_many_vias() -> None:
    msg = parse_and_validate(rfc4475.LONGREQ)
    assert msg.to.display_name == rfc4475.LONGREQ_DISPLAY
    assert msg.to.sip_uri.port == 6000
    assert len(msg.to.sip_uri.params) == 3
    assert msg.from_.tag == rfc4475.LONGREQ_TAG
    assert msg.from_.sip_uri.user == rfc4475.LONGREQ_CALLER
    assert msg.call_id == rfc4475.LONGREQ_CALL_ID
    hosts = [via.host for via in msg.vias]
    assert hosts == [f"sip{n}.example.com" for n in range(33, 0, -1)] + ["host.example.com"]
    assert msg.vias[-1].branch == rfc4475.LONGREQ_BRANCH
    assert msg.vias[-1].received == "192.0.2.5"
    assert msg.content_length == 150


def test_dblreq_trailing_octets_of_a_datagram_are_dropped() -> None:
    msg = parse_and_validate(rfc4475.DBLREQ)
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert msg.serialize() == rfc4475.DBLREQ_REGISTER
    assert b"INVITE" not in msg.serialize()


def test_semiuri_semicolon_in_the_user_part() -> None:
    msg = parse_and_validate(rfc4475.SEMIURI)
    assert isinstance(msg, Request)
    uri = msg.uri
    assert isinstance(uri, SipUri)
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert uri.params == {}
    assert msg.header_values("accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_unknown_transport_is_kept() -> None:
    msg = parse_and_validate(rfc4475.TRANSPORTS)
    assert [via.transport for via in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_binary_body_is_framed_by_content_length() -> None:
    msg = parse_and_validate(rfc4475.MPART01)
    assert len(msg.body) == 553
    assert rfc4475.MPART01_BINARY in msg.body
    assert msg.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert msg.content_type == "multipart/mixed"
    assert msg.top_via.has_rport
    assert msg.top_via.rport is None
    assert msg.top_via.port == 5070
    # Over TCP the same bytes come out as exactly one message.
    framer = StreamFramer()
    assert framer.feed(rfc4475.MPART01) == [rfc4475.MPART01]


def test_unreason_utf8_reason_phrase() -> None:
    msg = parse_and_validate(rfc4475.UNREASON)
    assert isinstance(msg, Response)
    assert msg.status == 200
    assert msg.reason.encode("latin-1").decode("utf-8") == rfc4475.UNREASON_PHRASE


def test_noreason_empty_reason_phrase() -> None:
    msg = parse_and_validate(rfc4475.NOREASON)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (100, "")


# -- §3.1.2 invalid messages --------------------------------------------------------------

# name -> the status a server answers with, or None for a response (dropped).
EXPECTED_REJECTION: dict[str, int | None] = {
    "badinv01": 400,  # empty Via and Contact parameters
    "clerr": 400,  # over UDP; see the stream test below
    "ncl": 400,
    "scalar02": 400,  # the CSeq is out of range (so are Max-Forwards and Expires)
    "scalarlg": None,
    "quotbal": 400,  # choice: no guessing where the quote should have ended
    "ltgtruri": 400,  # choice: reject rather than strip the <>
    "lwsruri": 400,
    "lwsstart": 400,  # choice: reject (the RFC allows it), we forward bytes as received
    "trws": 400,  # choice: reject, same reason
    "escruri": 400,  # choice: reject; headers have no place in a Request-URI
    "badaspec": 400,  # choice: reject; no guessing around spaces in <>
    "baddn": 400,
    "badvers": 505,
    "mismatch01": 400,
    "mismatch02": 400,  # the RFC prefers 501 but allows 400; the parser cannot know
    "bigcode": None,
}


def rejection(data: bytes) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_and_validate(data)
    return info.value


@pytest.mark.parametrize("name", list(EXPECTED_REJECTION))
def test_invalid_message_is_rejected_with_the_expected_status(name: str) -> None:
    error = rejection(rfc4475.INVALID[name])
    status = EXPECTED_REJECTION[name]
    if status is None:  # a broken response: nothing to answer, the caller drops it
        assert error.message is None or isinstance(error.message, Response)
        return
    assert error.status == status
    assert error.reason  # names the defect
    assert isinstance(error.message, Request)
    answer = make_response(error.message, error.status, error.reason, to_tag="x")
    reparsed = parse_message(answer.serialize())
    assert isinstance(reparsed, Response)
    assert reparsed.status == status
    assert reparsed.header_lines("via") == error.message.header_lines("via")
    assert reparsed.header("call-id") == error.message.header("call-id")


def test_regbadct_is_rejected_by_whoever_reads_the_contact() -> None:
    # Choice: reject (400), a URI with '?' must be in <> (RFC 3261 §20). Contacts are
    # parsed lazily, so the element that needs them (the registrar) gets the ParseError;
    # validate_request does not read them, to keep the stateless LB's cost down.
    msg = parse_and_validate(rfc4475.REGBADCT)
    with pytest.raises(ParseError) as info:
        msg.contacts  # noqa: B018
    assert info.value.status == 400
    assert "contact" in info.value.reason.lower()


def test_baddate_is_accepted_because_date_is_not_interpreted() -> None:
    # Choice (allowed by §3.1.2.12): the Date header is carried, never used, so a
    # non-GMT zone is no reason to refuse the request.
    msg = parse_and_validate(rfc4475.BADDATE)
    assert msg.header("date") == "Fri, 01 Jan 2010 16:00:00 EST"


@pytest.mark.parametrize(
    ("name", "reason_word"),
    [
        ("clerr", "Content-Length"),
        ("ncl", "Content-Length"),
        ("scalar02", "CSeq"),
        ("quotbal", "quoted"),
        ("ltgtruri", "URI"),
        ("lwsruri", "Request-Line"),
        ("escruri", "Request-URI"),
        ("badaspec", "To"),
        ("baddn", "From"),
        ("badvers", "Version"),
        ("mismatch01", "CSeq"),
    ],
)
def test_rejection_reason_names_the_defect(name: str, reason_word: str) -> None:
    assert reason_word.lower() in rejection(rfc4475.INVALID[name]).reason.lower()


def test_clerr_on_a_stream_waits_for_the_rest_of_the_body() -> None:
    framer = StreamFramer()
    assert framer.feed(rfc4475.CLERR) == []
    assert framer.pending == len(rfc4475.CLERR)


def test_ncl_on_a_stream_is_a_fatal_framing_error() -> None:
    with pytest.raises(ParseError) as info:
        StreamFramer().feed(rfc4475.NCL)
    assert info.value.status == 400
    assert isinstance(info.value.message, Request)


# -- §3.2 / §3.3 / §3.4 -------------------------------------------------------------------


def test_badbranch_bare_cookie_falls_back_to_rfc2543_matching() -> None:
    # Choice (§3.2.1 allows either): accept, and treat the bare cookie as no RFC 3261
    # transaction id, so a stateless branch is derived from the whole request.
    msg = parse_and_validate(rfc4475.BADBRANCH)
    assert isinstance(msg, Request)
    assert msg.top_via.branch == "z9hG4bK"
    assert not msg.top_via.is_rfc3261
    assert stateless_branch(msg).startswith("z9hG4bK")


@pytest.mark.parametrize(
    ("name", "status", "reason_word"),
    [
        ("insuf", 400, "Missing"),
        ("unkscm", 416, "scheme"),
        ("novelsc", 416, "scheme"),
        ("multi01", 400, "Multiple"),
        ("mcl01", 400, "Content-Length"),
    ],
)
def test_application_layer_rejections(name: str, status: int, reason_word: str) -> None:
    error = rejection(rfc4475.APPLICATION[name])
    assert error.status == status
    assert reason_word.lower() in error.reason.lower()
    assert isinstance(error.message, Request)
    make_response(error.message, error.status, error.reason)


def test_unksm2_unknown_schemes_in_header_fields_are_kept_opaque() -> None:
    msg = parse_and_validate(rfc4475.UNKSM2)
    assert msg.to.uri == AbsoluteUri("isbn", "isbn:2983792873")
    assert msg.from_.uri == AbsoluteUri("http", "http://www.example.com")
    assert msg.from_.tag == "3234233"
    assert [str(c.uri) for c in msg.contacts] == ["name:John_Smith"]


def test_bext01_require_and_proxy_require_are_listed() -> None:
    msg = parse_and_validate(rfc4475.BEXT01)
    assert msg.require == ["nothingsupportsthis", "nothingsupportsthiseither"]
    assert msg.proxy_require == ["noproxiessupportthis", "nordoanyproxiessupportthis"]


def test_invut_unknown_content_type_is_reported() -> None:
    msg = parse_and_validate(rfc4475.INVUT)
    assert msg.content_type == "application/unknownformat"
    assert len(msg.body) == 40


def test_regaut01_unknown_authorization_scheme() -> None:
    msg = parse_and_validate(rfc4475.REGAUT01)
    (credentials,) = msg.authorization
    assert credentials.scheme == "NoOneKnowsThisScheme"
    assert not credentials.is_digest
    assert credentials.params == {"opaque-data": "here"}


def test_bcast_response_parses_with_a_broadcast_via() -> None:
    msg = parse_and_validate(rfc4475.BCAST)
    assert isinstance(msg, Response)
    assert msg.vias[1].host == "255.255.255.255"


def test_zeromf_max_forwards_of_zero() -> None:
    msg = parse_and_validate(rfc4475.ZEROMF)
    assert msg.max_forwards == 0


def test_cparam01_parameter_after_an_addr_spec_belongs_to_the_header() -> None:
    (contact,) = parse_and_validate(rfc4475.CPARAM01).contacts
    assert contact.params == {"unknownparam": None}
    assert contact.sip_uri.params == {}
    assert contact.sip_uri.user == "+19725552222"


def test_cparam02_parameter_inside_the_angles_belongs_to_the_uri() -> None:
    (contact,) = parse_and_validate(rfc4475.CPARAM02).contacts
    assert contact.params == {}
    assert contact.sip_uri.params == {"unknownparam": None}


def test_regescrt_escaped_header_in_a_contact_uri() -> None:
    (contact,) = parse_and_validate(rfc4475.REGESCRT).contacts
    assert contact.sip_uri.headers == {"Route": "%3Csip:sip.example.com%3E"}


def test_sdp01_accept_is_available_to_the_application() -> None:
    msg = parse_and_validate(rfc4475.SDP01)
    assert msg.header_values("accept") == ["text/nobodyKnowsThis"]


def test_inv2543_rfc2543_request_is_accepted() -> None:
    msg = parse_and_validate(rfc4475.INV2543)
    assert isinstance(msg, Request)
    assert msg.top_via.branch is None
    assert not msg.top_via.is_rfc3261
    assert msg.max_forwards is None
    assert msg.from_.tag is None
    assert msg.to.params == {"user": "phone"}  # addr-spec: the parameter is the header's
    assert msg.content_length is None
    assert msg.body.startswith(b"v=0\r\n")
    assert msg.body.endswith(b"RTP/AVP 0\r\n")
    again = parse_message(rfc4475.INV2543)
    assert isinstance(again, Request)
    assert stateless_branch(msg) == stateless_branch(again)
