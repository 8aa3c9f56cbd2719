"""Digest header syntax and arithmetic (RFC 2617, RFC 7616 / RFC 8760 SHA-256)."""

from __future__ import annotations

import pytest

from sipfleet.sip import ParseError
from sipfleet.sip.digest import (
    compute_ha1,
    compute_response,
    format_challenge,
    format_credentials,
    hash_hex,
    parse_auth_header,
)

# RFC 2617 §3.5 (the "Mufasa" example).
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_rfc2617_example_parses() -> None:
    header = parse_auth_header(RFC2617_AUTHORIZATION)
    assert header.scheme == "Digest"
    assert header.is_digest
    assert header.username == "Mufasa"
    assert header.realm == "testrealm@host.com"
    assert header.nonce == "dcd98b7102dd2f0e8b11d0f600bfb0c093"
    assert header.get("uri") == "/dir/index.html"
    assert header.get("qop") == "auth"
    assert header.get("nc") == "00000001"
    assert header.get("cnonce") == "0a4f113b"
    assert header.get("opaque") == "5ccc069c403ebaf9f0171e9517f40e41"
    assert header.algorithm == "MD5"  # the default


def test_rfc2617_example_response_is_computed() -> None:
    header = parse_auth_header(RFC2617_AUTHORIZATION)
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    expected = compute_response(
        ha1,
        "GET",
        "/dir/index.html",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert expected == "6629fae49393a05397450978507c4ef1"
    assert header.get("response") == expected


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example_responses(algorithm: str, expected: str) -> None:
    ha1 = compute_ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    response = compute_response(
        ha1,
        "GET",
        "/dir/index.html",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        algorithm,
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert response == expected


def test_response_without_qop() -> None:
    # RFC 2069 style: MD5(HA1:nonce:HA2)
    ha1 = hash_hex("MD5", "bob:biloxi.example.com:zanzibar")
    ha2 = hash_hex("MD5", "REGISTER:sip:biloxi.example.com")
    expected = hash_hex("MD5", f"{ha1}:abc:{ha2}")
    assert compute_response(ha1, "REGISTER", "sip:biloxi.example.com", "abc") == expected


def test_unknown_algorithm_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        hash_hex("SHA-512-256-unknown", "x")


def test_challenge_and_credentials_round_trip() -> None:
    challenge = parse_auth_header(
        format_challenge("biloxi.example.com", "n0nce", "SHA-256", stale=True, opaque="op")
    )
    assert challenge.realm == "biloxi.example.com"
    assert challenge.nonce == "n0nce"
    assert challenge.algorithm == "SHA-256"
    assert challenge.get("qop") == "auth"
    assert challenge.get("stale") == "true"
    assert challenge.get("opaque") == "op"
    credentials = parse_auth_header(
        format_credentials(
            'bob "the" builder',
            "biloxi.example.com",
            "n0nce",
            "sip:biloxi.example.com",
            "abcd",
            qop="auth",
            nc="00000001",
            cnonce="c",
            opaque="op",
        )
    )
    assert credentials.username == 'bob "the" builder'
    assert credentials.get("uri") == "sip:biloxi.example.com"
    assert credentials.get("response") == "abcd"
    assert credentials.get("nc") == "00000001"


def test_quoted_values_may_hold_commas_equals_and_escapes() -> None:
    header = parse_auth_header(
        'Digest realm="a,b=c", nonce="x\\"y", qop="auth,auth-int" ,  algorithm = md5'
    )
    assert header.realm == "a,b=c"
    assert header.nonce == 'x"y'
    assert header.get("qop") == "auth,auth-int"
    assert header.algorithm == "MD5"


def test_parameter_names_are_case_insensitive() -> None:
    header = parse_auth_header('digest UserName="bob", REALM="r"')
    assert header.is_digest
    assert header.username == "bob"
    assert header.realm == "r"


def test_other_schemes_are_parsed_without_interpretation() -> None:
    header = parse_auth_header("NoOneKnowsThisScheme opaque-data=here")
    assert not header.is_digest
    assert header.params == {"opaque-data": "here"}
    bare = parse_auth_header("Bearer")
    assert bare.scheme == "Bearer"
    assert bare.params == {}


@pytest.mark.parametrize("text", ["", "   ", 'Digest realm="unterminated'])
def test_broken_auth_headers(text: str) -> None:
    with pytest.raises(ParseError):
        parse_auth_header(text)


def test_a_tab_may_separate_the_scheme_from_the_parameters() -> None:
    header = parse_auth_header('Digest\tusername="bob",\trealm="r"')
    assert header.scheme == "Digest"
    assert header.username == "bob"
    assert header.realm == "r"
