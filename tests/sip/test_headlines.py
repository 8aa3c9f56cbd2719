"""The readers of sip/headlines.py that the fast paths share, against what they stand for."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipfleet.sip import ParseError, Request, parse_message
from sipfleet.sip.headlines import alnum_besides, alnum_dash_dot, untagged


@given(st.text(alphabet="aZ09-._é \x00~/=?", max_size=8))
def test_alnum_besides_is_the_replace_it_spares(text: str) -> None:
    bare = text.replace("-", "").replace(".", "")
    assert alnum_besides(text, "-", ".") is (bare.isalnum() and bare.isascii())
    assert alnum_dash_dot(text) is (bare.isalnum() and bare.isascii())


@given(
    st.text(alphabet="aZ09-._é\u0663", max_size=8),
    st.sampled_from(["-", "_", "a", "é", "\u0663", "", "-."]),
    st.sampled_from([".", "_", "0", "é", "-_"]),
)
def test_alnum_besides_any_characters(text: str, one: str, other: str) -> None:
    """Other characters besides (the Router's "-" and "_"), and arguments that are not
    one character or are letters themselves (read by replacing)."""
    bare = text.replace(one, "") if one else text
    bare = bare.replace(other, "")
    assert alnum_besides(text, one, other) is (bare.isalnum() and bare.isascii())


@pytest.mark.parametrize(
    "value",
    [
        "<sip:bob@127.0.0.1>",
        "<sip:bob@127.0.0.1>;tag=1",
        "Bob <sip:bob@127.0.0.1>;x=1",
        "sip:bob@127.0.0.1;tag=2",
        "<sip:bob@127.0.0.1>;TAG=3",
        '"Bob, B" <sip:bob@127.0.0.1>',
        "<sip:bob@127.0.0.1",
        "<sip:bob@127.0.0.1>, <sip:carol@127.0.0.1>",
        "",
    ],
)
def test_untagged_as_the_to_accessor_reads_it(value: str) -> None:
    data = (
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n"
        f"To: {value}\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    try:
        expected = request.to.tag is None
    except ParseError:
        expected = False
    got = untagged(f"To: {value}", "To")
    # a comma is declined even where the accessor reads the value (a quoted one)
    assert got is expected or ("," in value and not got)
