"""name-addr / addr-spec values: display names, parameters, lazily parsed URIs."""

from __future__ import annotations

import pytest

from sipfleet.sip import Address, ParseError, SipUri, TelUri, parse_address
from sipfleet.sip.address import display_from_text


def test_name_addr_with_quoted_display_name_and_tag() -> None:
    address = parse_address(
        '"Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774', "From"
    )
    assert address.display == '"Alice Liddell"'
    assert address.display_name == "Alice Liddell"
    assert address.uri_text == "sip:alice@atlanta.example.com"
    assert address.tag == "1928301774"
    assert address.params == {"tag": "1928301774"}
    assert str(address) == '"Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774'


def test_unquoted_token_display_name() -> None:
    address = parse_address("Bob Smith <sip:bob@biloxi.example.com>", "To")
    assert address.display == "Bob Smith"
    assert address.display_name == "Bob Smith"
    assert address.tag is None


def test_no_display_name() -> None:
    address = parse_address("<sip:bob@biloxi.example.com>", "To")
    assert address.display is None
    assert address.display_name is None


@pytest.mark.parametrize(
    ("wire", "name"),
    [
        (r'"Quoted \"nick\"" <sip:a@b>', 'Quoted "nick"'),
        (r'"back\\slash" <sip:a@b>', "back\\slash"),
        (r'"a\,b;c<d>" <sip:a@b>', "a,b;c<d>"),
        ('"" <sip:a@b>', ""),
        ('"comma, inside"<sip:a@b>', "comma, inside"),
    ],
)
def test_quoted_display_names_with_escapes(wire: str, name: str) -> None:
    assert parse_address(wire, "From").display_name == name


def test_utf8_display_name_round_trips_through_latin1_text() -> None:
    wire_text = '"Zoë Ångström 山田" <sip:zoe@example.com>'.encode().decode("latin-1")
    address = parse_address(wire_text, "From")
    assert address.display_name == "Zoë Ångström 山田"
    assert str(address).encode("latin-1") == '"Zoë Ångström 山田" <sip:zoe@example.com>'.encode()


def test_display_name_that_is_not_utf8_is_kept_as_latin1() -> None:
    address = parse_address('"caf\xe9" <sip:a@b>', "From")  # a latin-1 phone
    assert address.display_name == "caf\xe9"


def test_display_from_text_quotes_and_encodes() -> None:
    wire_text = display_from_text('Zoë "Z" \\')
    assert wire_text == '"Zo\xc3\xab \\"Z\\" \\\\"'
    address = parse_address(f"{wire_text} <sip:zoe@example.com>", "From")
    assert address.display_name == 'Zoë "Z" \\'


def test_addr_spec_parameters_belong_to_the_header() -> None:
    # RFC 3261 §20.10: without <>, what follows ';' is a header parameter.
    address = parse_address("sip:bob@biloxi.example.com;tag=abc;expires=60", "To")
    assert address.uri_text == "sip:bob@biloxi.example.com"
    assert address.params == {"tag": "abc", "expires": "60"}
    sip_uri = address.sip_uri
    assert sip_uri.params == {}


def test_name_addr_parameters_inside_and_outside_the_angles() -> None:
    address = parse_address(
        '<sip:bob@192.0.2.4;transport=tcp>;expires=3600;q=0.7;+sip.instance="<urn:x>"',
        "Contact",
    )
    assert address.sip_uri.params == {"transport": "tcp"}
    assert address.params == {"expires": "3600", "q": "0.7", "+sip.instance": '"<urn:x>"'}


def test_parameter_names_are_lower_case_values_keep_their_case() -> None:
    address = parse_address("<sip:a@b>;Tag=AbC;LR", "Route")
    assert address.params == {"tag": "AbC", "lr": None}


def test_whitespace_around_parameters_is_tolerated() -> None:
    address = parse_address("<sip:a@b> ; tag = xyz ; lr", "From")
    assert address.params == {"tag": "xyz", "lr": None}


def test_uri_is_parsed_on_first_use_and_cached() -> None:
    address = parse_address("<sip:alice@atlanta.example.com:5070>", "To")
    assert address._uri is None
    first = address.uri
    assert isinstance(first, SipUri)
    assert first.port == 5070
    assert address.uri is first


def test_tel_and_other_schemes() -> None:
    tel = parse_address("<tel:+12015550123>;tag=1", "From")
    assert isinstance(tel.uri, TelUri)
    with pytest.raises(ParseError):
        tel.sip_uri  # noqa: B018
    other = parse_address("<urn:service:sos>", "To")
    assert str(other.uri) == "urn:service:sos"


@pytest.mark.parametrize(
    "text",
    [
        "<sip:alice@example.com:99999>",
        "<sip:alice@exa mple.com>",
        "<sip:[::zz]>",
        "sip:alice@[2001:db8::1",
        "<sip:@example.com>",
    ],
)
def test_a_bad_uri_is_reported_when_the_uri_is_read(text: str) -> None:
    try:
        address = parse_address(text, "Contact")
    except ParseError:
        return  # caught early: fine too
    with pytest.raises(ParseError) as info:
        address.uri  # noqa: B018
    assert info.value.status == 400
    assert "URI" in info.value.reason


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        ("", "Empty"),
        ('"unterminated <sip:a@b>', "unterminated"),
        ('"Alice" sip:a@b', "display name without <URI>"),
        ("<sip:a@b", "missing '>'"),
        ("< sip:a@b >", "bad characters"),
        ("<sip:a@b> junk", "text after '>'"),
        ("Bell, Alexander <sip:a@b>", "quoted"),
        ("<sip:a@b>;;", "parameters"),
        ("<sip:a@b>;tag=", "parameters"),
        ("<nocolon>", "bad URI"),
        ("sip:a@b c", "spaces"),
        ("sip:a@b?Route=x", "must be enclosed in <>"),
        ('sip:a@b "x"', ""),
    ],
)
def test_broken_addresses(text: str, reason_part: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_address(text, "From")
    assert info.value.status == 400
    assert reason_part.lower() in info.value.reason.lower()


def test_replace_and_with_param_render_a_new_value() -> None:
    address = parse_address('"Alice" <sip:alice@atlanta.example.com>;tag=1', "From")
    tagged = address.with_param("Tag", "2")
    assert str(tagged) == '"Alice" <sip:alice@atlanta.example.com>;tag=2'
    assert address.tag == "1"
    anonymous = address.replace(uri="sip:anonymous@anonymous.invalid", display='"Anonymous"')
    assert str(anonymous) == '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1'
    bare = address.replace(display=None, params={})
    assert str(bare) == "<sip:alice@atlanta.example.com>"


def test_address_built_from_parts() -> None:
    uri = SipUri("sip", "bob", None, "192.0.2.4", 5060)
    address = Address(uri, None, {"lr": None})
    assert address.uri is uri
    assert str(address) == "<sip:bob@192.0.2.4:5060>;lr"


@pytest.mark.parametrize(
    ("params", "expires", "q"),
    [
        ("", None, None),
        (";expires=3600;q=0.7", 3600, 0.7),
        (";expires=0;q=1", 0, 1.0),
        (";EXPIRES=4294967295;Q=1.000", 4294967295, 1.0),
        (";q=0", None, 0.0),
        (";q=0.", None, 0.0),
    ],
)
def test_contact_expires_and_q(params: str, expires: int | None, q: float | None) -> None:
    contact = parse_address(f"<sip:bob@192.0.2.4>{params}", "Contact")
    assert contact.expires == expires
    assert contact.q == q


@pytest.mark.parametrize(
    "params",
    [";expires=280297596632815", ";expires=-1", ";expires=soon", ";expires=\xb2", ";expires"],
)
def test_bad_contact_expires_is_a_parse_error_when_read(params: str) -> None:
    contact = parse_address(f"<sip:bob@192.0.2.4>{params}", "Contact")
    with pytest.raises(ParseError):
        contact.expires  # noqa: B018


@pytest.mark.parametrize("value", ["1.5", "2", "0.1234", "-0.5", ".5", "1.001", "abc", "0,5", ""])
def test_bad_q_value_is_a_parse_error_when_read(value: str) -> None:
    try:
        text = f"<sip:bob@192.0.2.4>;q={value}" if value else "<sip:bob@192.0.2.4>;q"
        contact = parse_address(text, "Contact")
    except ParseError:
        return  # refused while splitting the parameters: fine too
    with pytest.raises(ParseError):
        contact.q  # noqa: B018
