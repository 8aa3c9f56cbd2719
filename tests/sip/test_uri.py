"""URIs: sip, sips, tel and others; escapes, IPv6, and RFC 3261 §19.1.4 comparison."""

from __future__ import annotations

import dataclasses

import pytest

from sipfleet.sip import AbsoluteUri, ParseError, SipUri, TelUri, parse_uri
from sipfleet.sip.uri import split_hostport, uri_equal


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def test_every_part_of_a_sip_uri() -> None:
    uri = sip("sips:alice:secret@Atlanta.Example.COM:5061;transport=TCP;lr;ttl=5?Subject=hi&X=1")
    assert uri.scheme == "sips"
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.host == "Atlanta.Example.COM"
    assert uri.host_bare == "atlanta.example.com"
    assert uri.port == 5061
    assert uri.params == {"transport": "TCP", "lr": None, "ttl": "5"}
    assert uri.headers == {"Subject": "hi", "X": "1"}
    assert uri.transport == "tcp"
    assert uri.is_loose_router


def test_minimal_sip_uri_and_defaults() -> None:
    uri = sip("sip:example.com")
    assert (uri.user, uri.password, uri.host, uri.port) == (None, None, "example.com", None)
    assert uri.params == {}
    assert uri.headers == {}
    assert uri.transport == "udp"
    assert sip("sips:example.com").transport == "tls"
    assert not uri.is_loose_router


def test_scheme_is_case_insensitive_and_text_is_kept() -> None:
    text = "SIP:Bob@Biloxi.example.com"
    uri = sip(text)
    assert uri.scheme == "sip"
    assert uri.user == "Bob"
    assert str(uri) == text


def test_replace_renders_a_new_uri_and_leaves_the_original() -> None:
    uri = sip("sip:bob@biloxi.example.com;transport=tcp")
    moved = uri.replace(host="192.0.2.4", port=5070)
    assert str(moved) == "sip:bob@192.0.2.4:5070;transport=tcp"
    assert str(uri) == "sip:bob@biloxi.example.com;transport=tcp"
    assert str(SipUri("sip", None, None, "[2001:db8::1]", 5060, {"lr": None})) == (
        "sip:[2001:db8::1]:5060;lr"
    )
    assert str(uri.replace(headers={"Subject": "x"}, params={})) == (
        "sip:bob@biloxi.example.com?Subject=x"
    )


@pytest.mark.parametrize(
    ("text", "host", "bare", "port"),
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", "2001:db8::10", None),
        ("sip:alice@[2001:DB8::10]:5070;transport=tcp", "[2001:DB8::10]", "2001:db8::10", 5070),
        ("sip:[::ffff:192.0.2.1]:5060", "[::ffff:192.0.2.1]", "::ffff:192.0.2.1", 5060),
    ],
)
def test_ipv6_references(text: str, host: str, bare: str, port: int | None) -> None:
    uri = sip(text)
    assert (uri.host, uri.host_bare, uri.port) == (host, bare, port)


@pytest.mark.parametrize(
    "text",
    [
        "sip:[2001:db8::10",  # unterminated reference
        "sip:[2001:db8::10]5060",  # port without a colon
        "sip:[2001:db8::zz]",  # not an address
        "sip:2001:db8::10",  # RFC 5118: IPv6 hosts must be in brackets
        "sip:[192.0.2.1]",  # brackets are for IPv6 only
    ],
)
def test_bad_ipv6_references(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@example.com",
        "sip:alice@",
        "sip:alice@example.com:",
        "sip:alice@example.com:65536",
        "sip:alice@example.com:5o60",
        "sip:alice@exa mple.com",
        "sip:alice@-example.com",
        "sip:alice@example.com;=x",
        "sip:alice@example.com;a=b=c",
        "sip:alice@example.com?",
        "sip:al<ice@example.com",
        "sip:alice@exam_ple!.com",
        ":alice@example.com",
        "example.com",
    ],
)
def test_broken_sip_uris_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_escapes_are_kept_in_the_text_and_resolved_for_comparison() -> None:
    uri = sip("sip:%61lice%20smith@atlanta.example.com")
    assert uri.user == "%61lice%20smith"
    assert uri == sip("sip:alice%20smith@atlanta.example.com")
    assert uri != sip("sip:alice+smith@atlanta.example.com")


def test_escaped_reserved_characters_compare_after_unescaping() -> None:
    # Unescaping is done once, never recursively: %2541 is "%41", not "A".
    assert sip("sip:a%2541@h") == sip("sip:a%2541@h")
    assert sip("sip:a%2541@h") != sip("sip:aA@h")


# RFC 3261 §19.1.4: "The URIs within each of the following sets are equivalent".
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
]

# "The URIs within each of the following sets are not equivalent".
UNEQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_rfc3261_equal_uris(a: str, b: str) -> None:
    assert sip(a) == sip(b)
    assert sip(b) == sip(a)
    assert hash(sip(a)) == hash(sip(b))


@pytest.mark.parametrize(("a", "b"), UNEQUAL)
def test_rfc3261_unequal_uris(a: str, b: str) -> None:
    assert sip(a) != sip(b)
    assert sip(b) != sip(a)


def test_equality_is_not_transitive() -> None:
    # §19.1.4: security=on and security=off each equal the bare URI, not each other.
    bare = sip("sip:carol@chicago.com")
    on = sip("sip:carol@chicago.com;security=on")
    off = sip("sip:carol@chicago.com;security=off")
    assert bare == on
    assert bare == off
    assert on != off


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("sip:alice@h", "sips:alice@h", False),  # sip and sips never match
        ("sip:alice@h", "sip:alice:pw@h", False),  # password in one only
        ("sip:alice:pw@h", "sip:alice:PW@h", False),  # userinfo is case-sensitive
        ("sip:h;user=phone", "sip:h", False),
        ("sip:h;ttl=1", "sip:h", False),
        ("sip:h;method=INVITE", "sip:h", False),
        ("sip:h;maddr=239.255.255.1", "sip:h", False),
        ("sip:h;lr", "sip:h", True),  # other parameters only matter when both have them
        ("sip:h;lr", "sip:h;lr=on", False),  # a flag is not a value
        ("sip:h;%6C%72", "sip:h;lr", True),  # escaped parameter names
        ("sip:h;foo=%41", "sip:h;foo=a", True),  # values are case-insensitive after unescape
        ("sip:h?Subject=x", "sip:h?subject=x", True),  # header names case-insensitive
        ("sip:h?Subject=x", "sip:h?Subject=X", False),  # header values are not
        ("sip:[::1]", "sip:[0:0:0:0:0:0:0:1]", True),  # IPv6 compared as addresses
        ("sip:[2001:DB8::1]:5060", "sip:[2001:db8::1]:5060", True),
        ("sip:[::1]", "sip:[::2]", False),
    ],
)
def test_comparison_rules(a: str, b: str, equal: bool) -> None:
    assert uri_equal(sip(a), sip(b)) is equal
    assert uri_equal(sip(b), sip(a)) is equal
    if equal:  # usable as dict keys: equal URIs hash alike
        assert hash(sip(a)) == hash(sip(b))


def test_sip_uri_is_never_equal_to_a_tel_uri() -> None:
    assert sip("sip:+12015550123@example.com;user=phone") != parse_uri("tel:+12015550123")


def test_tel_uris() -> None:
    uri = parse_uri("tel:+1-201-555-0123;ext=42")
    assert isinstance(uri, TelUri)
    assert uri.scheme == "tel"
    assert uri.number == "+1-201-555-0123"
    assert uri.digits == "+12015550123"
    assert uri.is_global
    assert uri.params == {"ext": "42"}
    assert str(uri) == "tel:+1-201-555-0123;ext=42"
    local = parse_uri("tel:7042;phone-context=Example.com")
    assert isinstance(local, TelUri)
    assert not local.is_global
    assert local.params == {"phone-context": "Example.com"}


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("tel:+1-201-555-0123", "tel:+12015550123", True),  # visual separators ignored
        ("tel:+1(201)555.0123", "TEL:+12015550123", True),
        ("tel:7042;phone-context=example.com", "tel:7042;phone-context=EXAMPLE.com", True),
        ("tel:7042;phone-context=example.com", "tel:7042;phone-context=example.net", False),
        ("tel:+12015550123", "tel:+12015550124", False),
        ("tel:+12015550123;ext=1", "tel:+12015550123", False),
    ],
)
def test_tel_uri_comparison(a: str, b: str, equal: bool) -> None:
    assert (parse_uri(a) == parse_uri(b)) is equal


@pytest.mark.parametrize("text", ["tel:", "tel:+1 201", "tel:abc@host", "tel:+1;=x"])
def test_broken_tel_uris(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_other_schemes_are_kept_as_text_or_refused_in_the_request_uri() -> None:
    uri = parse_uri("urn:service:sos")
    assert uri == AbsoluteUri("urn", "urn:service:sos")
    assert str(uri) == "urn:service:sos"
    with pytest.raises(ParseError) as info:
        parse_uri("urn:service:sos", allow_other_schemes=False)
    assert info.value.status == 416
    assert "urn" in info.value.reason


@pytest.mark.parametrize("text", ["<sip:a@b>", "1abc:xyz", "ht tp:x", "-x:y", "a_b:c"])
def test_malformed_scheme_or_absolute_uri_is_400_not_416(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text, allow_other_schemes=False)
    assert info.value.status == 400


def test_user_part_may_hold_question_marks_and_semicolons() -> None:
    # RFC 4475 §3.1.1.2 and §3.1.1.9: only the first '@' ends the userinfo.
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", {})
    uri = sip("sip:what?now,then@example.com;lr?X=1")
    assert (uri.user, uri.host) == ("what?now,then", "example.com")
    assert uri.params == {"lr": None}
    assert uri.headers == {"X": "1"}


def test_a_uri_made_by_hand_has_its_own_parameter_and_header_tables() -> None:
    first = SipUri("sip", "bob", None, "192.0.2.4", 5060)
    second = SipUri("sip", None, None, "192.0.2.5", None)
    first.params["lr"] = None
    assert (second.params, second.headers, second.raw) == ({}, {}, "")
    assert str(first) == "sip:bob@192.0.2.4:5060;lr"
    full = SipUri("sips", "a", "pw", "h.example", 5061, {"transport": "tcp"}, {"x": "1"}, "raw")
    assert (full.scheme, full.user, full.password, full.host, full.port) == (
        "sips",
        "a",
        "pw",
        "h.example",
        5061,
    )
    assert (full.params, full.headers, str(full)) == ({"transport": "tcp"}, {"x": "1"}, "raw")
    assert dataclasses.replace(full, host="other").host == "other"
    assert [f.name for f in dataclasses.fields(SipUri)] == [
        "scheme",
        "user",
        "password",
        "host",
        "port",
        "params",
        "headers",
        "raw",
    ]


def test_host_and_port_are_checked_alike_whether_seen_before_or_not() -> None:
    for _ in range(2):  # the second time from the memo
        assert split_hostport("Proxy.Example.COM:5070", "x") == ("Proxy.Example.COM", 5070)
        assert split_hostport("192.0.2.1", "x") == ("192.0.2.1", None)
        assert split_hostport("[::1]:5062", "x") == ("[::1]", 5062)
        for bad in ("192.0.2.1:70000", "bad host", "-a.example", "[::g]:5060", "h:port"):
            with pytest.raises(ParseError):
                split_hostport(bad, "x")
    assert sip("sip:bob@Proxy.Example.COM:5070").host == "Proxy.Example.COM"
