"""The Via header: sent-by, branch, received, rport (RFC 3581), IPv6, odd whitespace."""

from __future__ import annotations

import pytest

from sipfleet.sip import ParseError, Via, parse_message, parse_via
from sipfleet.sip.via import has_plain_params, made_via


def test_the_usual_via() -> None:
    text = "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport"
    via = parse_via(text)
    assert via.protocol == "SIP/2.0"
    assert via.transport == "UDP"
    assert via.host == "pc33.atlanta.example.com"
    assert via.port == 5060
    assert via.sent_by == ("pc33.atlanta.example.com", 5060)
    assert via.branch == "z9hG4bK776asdhds"
    assert via.is_rfc3261
    assert via.has_rport
    assert via.rport is None
    assert via.received is None
    assert str(via) == text


def test_received_and_rport_values() -> None:
    via = parse_via("SIP/2.0/UDP 10.0.0.7:5062;rport=40123;received=198.51.100.7;branch=z9hG4bKx")
    assert via.rport == 40123
    assert via.received == "198.51.100.7"
    assert via.response_address() == ("198.51.100.7", 40123)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SIP/2.0/UDP a.example.com;branch=z9hG4bKx", ("a.example.com", 5060)),
        ("SIP/2.0/UDP a.example.com:5070;branch=z9hG4bKx", ("a.example.com", 5070)),
        ("SIP/2.0/UDP a.example.com;received=192.0.2.1", ("192.0.2.1", 5060)),
        ("SIP/2.0/UDP a.example.com:5070;rport=9;received=192.0.2.1", ("192.0.2.1", 9)),
        ("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKx", ("2001:db8::9", 5070)),
        ("SIP/2.0/UDP h;received=2001:db8::7;rport=1024", ("2001:db8::7", 1024)),
        ("SIP/2.0/UDP h;rport=abc", ("h", 5060)),  # a junk rport is ignored
    ],
)
def test_response_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_via(text).response_address() == expected


def test_ipv6_sent_by() -> None:
    via = parse_via("SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bKv6")
    assert via.transport == "TCP"
    assert via.host == "[2001:db8::9]"
    assert via.port == 5061
    assert parse_via("SIP/2.0/UDP [::1];branch=z9hG4bKv6").port is None


@pytest.mark.parametrize(
    "text",
    [
        "SIP / 2.0 / UDP   host.example.com ; branch = z9hG4bKx",
        "SIP/2.0/UDP\thost.example.com;branch=z9hG4bKx",
        "  SIP/2.0/UDP host.example.com;branch=z9hG4bKx  ",
        "sip/2.0/udp host.example.com;branch=z9hG4bKx",
        "SIP/2.0/UDP host.example.com : 5060 ;branch=z9hG4bKx",
        "SIP/2.0/UDP host.example.com;BRANCH=z9hG4bKx",
    ],
)
def test_odd_but_legal_whitespace_and_case(text: str) -> None:
    via = parse_via(text.strip())
    assert via.transport == "UDP"
    assert via.host == "host.example.com"
    assert via.branch == "z9hG4bKx"


def test_unknown_transport_and_extension_parameters() -> None:
    via = parse_via("SIP/2.0/FOO h.example.com;branch=z9hG4bKx;maddr=224.0.0.1;ttl=16;alias")
    assert via.transport == "FOO"
    assert via.params == {"branch": "z9hG4bKx", "maddr": "224.0.0.1", "ttl": "16", "alias": None}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0 host.example.com",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP ",
        "HTTP/1.1/TCP host.example.com",
        "SIP/2.0/UDP host.example.com:99999",
        "SIP/2.0/UDP host.example.com:5o60",
        "SIP/2.0/UDP [2001:db8::zz]:5060",
        "SIP/2.0/UDP -host.example.com",
        "SIP/2.0/UDP host example.com",
    ],
)
def test_broken_sent_by_raises_at_once(text: str) -> None:
    with pytest.raises(ParseError):
        parse_via(text)


@pytest.mark.parametrize(
    "params",
    [";branch=", ";;", ";branch=a=b", ";=x", ';branch="unterminated'],
)
def test_broken_parameters_raise_parse_error_when_read(params: str) -> None:
    via = parse_via("SIP/2.0/UDP host.example.com" + params)  # cheap: params are lazy
    with pytest.raises(ParseError):
        via.branch  # noqa: B018
    with pytest.raises(ParseError):
        via.params  # noqa: B018


def test_rfc2543_via_has_no_transaction_id() -> None:
    assert not parse_via("SIP/2.0/UDP h").is_rfc3261
    assert not parse_via("SIP/2.0/UDP h;branch=1234").is_rfc3261
    assert not parse_via("SIP/2.0/UDP h;branch=z9hG4bK").is_rfc3261
    assert parse_via("SIP/2.0/UDP h;branch=z9hG4bK1").is_rfc3261


def test_built_via_renders_and_replace_keeps_the_original() -> None:
    via = Via("TCP", "lb.example.com", 5060, {"branch": "z9hG4bKabc", "rport": None})
    assert str(via) == "SIP/2.0/TCP lb.example.com:5060;branch=z9hG4bKabc;rport"
    stamped = via.replace(params={**via.params, "received": "192.0.2.1"})
    assert (
        str(stamped) == "SIP/2.0/TCP lb.example.com:5060;branch=z9hG4bKabc;rport;received=192.0.2.1"
    )
    assert "received" not in via.params


def test_a_known_sent_by_is_parsed_from_memory_with_its_own_parameters() -> None:
    """The second Via of a sent-by reuses what the first taught; its parameters are its own."""
    first = parse_via("SIP/2.0/UDP memo.example.com:5070;branch=z9hG4bK1;rport")
    again = parse_via("SIP/2.0/UDP memo.example.com:5070;branch=z9hG4bK2;received=10.0.0.1")
    assert (again.transport, again.host, again.port) == ("UDP", "memo.example.com", 5070)
    assert again.params == {"branch": "z9hG4bK2", "received": "10.0.0.1"}
    assert first.params == {"branch": "z9hG4bK1", "rport": None}
    assert parse_via("SIP/2.0/UDP memo.example.com:5070").params == {}
    quoted = parse_via('SIP/2.0/UDP memo.example.com:5070;branch=z9hG4bK3;x="a b"')
    assert quoted.params["x"] == '"a b"'  # not plain: the full parse, as before
    with pytest.raises(ParseError):
        parse_via("SIP/2.0/UDP memo.example.com:5070;branch=").params  # noqa: B018


@pytest.mark.parametrize(
    "sent_by",
    [
        "SIP/2.0/UDP 192.0.2.10:5060",
        "SIP/2.0/TCP 192.0.2.10:5061",
        "SIP/2.0/UDP [2001:db8::1]:5060",
        "SIP/2.0/UDP odd-.example:5060",
    ],
)
def test_a_made_via_is_what_parsing_its_text_gives(sent_by: str) -> None:
    for n in range(2):  # the first made and the next (its sent-by then known, if plain)
        branch = f"z9hG4bKspa1b2c3d4{n:x}.0123456789abcdef"
        made = made_via(sent_by, branch)
        parsed = parse_via(f"{sent_by};branch={branch}")
        assert type(made) is type(parsed)
        assert str(made) == str(parsed) == f"{sent_by};branch={branch}"
        assert (made.transport, made.host, made.port, made.protocol) == (
            parsed.transport,
            parsed.host,
            parsed.port,
            parsed.protocol,
        )
        assert made.params == parsed.params == {"branch": branch}
        assert has_plain_params(made) == has_plain_params(parsed)


def test_a_pushed_via_object_is_the_top_via_and_its_text_the_top_line() -> None:
    message = parse_message(
        b"BYE sip:b@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert message.top_via.host == "192.0.2.1"  # read (cached) before the push
    ours = made_via("SIP/2.0/UDP 192.0.2.9:5060", "z9hG4bKsp1.ab")
    message.push_via(ours)
    assert message.top_via is ours
    assert message.header_lines("via") == [str(ours), "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa"]
    assert [via.branch for via in message.vias] == ["z9hG4bKsp1.ab", "z9hG4bKa"]
    reparsed = parse_message(message.serialize())
    assert str(reparsed.top_via) == str(ours)
