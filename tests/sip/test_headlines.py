"""The readers of sip/headlines.py that the fast paths share, against what they stand for."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipfleet.sip import ParseError, Request, parse_message
from sipfleet.sip.headers import HEADER_KEYS, header_key
from sipfleet.sip.headlines import (
    COMMON_NAMES,
    alnum_besides,
    alnum_dash_dot,
    head_end_of,
    name_key,
    untagged,
)


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


def _key_as_the_parser_reads(line: str) -> str:
    """What HeadLines read before the common names' table: the parser's memo."""
    colon = line.find(":")
    return HEADER_KEYS.table.get(line[:colon] if colon >= 0 else line, "")


@pytest.mark.parametrize("name", COMMON_NAMES)
def test_a_common_name_reads_as_the_parser_reads_it(name: str) -> None:
    assert name_key(f"{name}: 1") == header_key(name)
    assert name_key(f"{name}:1") == header_key(name)


def test_the_common_names_are_read_without_the_memo() -> None:
    """Each is found at its slot (the slot name_key computes in place is the one the
    table was built with), not through the parser's memo: read with the memo emptied."""
    keys = {name: header_key(name) for name in COMMON_NAMES}
    kept = dict(HEADER_KEYS.table)
    HEADER_KEYS.table.clear()
    try:
        read = {name: name_key(f"{name}: 1") for name in COMMON_NAMES}
    finally:
        HEADER_KEYS.table.update(kept)
    assert read == keys


@given(
    st.one_of(
        st.sampled_from(COMMON_NAMES),
        st.text(alphabet="VviaACcoOntlL-DqQx :\t", max_size=22),
    ),
    st.text(alphabet="Vi: a-", max_size=6),
)
def test_any_name_reads_as_the_memo_reads_it_or_is_left_to_it(name: str, rest: str) -> None:
    """A near miss of a common name (another letter, a blank before the colon, another
    case, a name as long as another whose slot it falls in) is not read as that name:
    it is looked up, and "" (left to the parser) when the parser has not met it."""
    line = name + rest
    got = name_key(line)
    expected = _key_as_the_parser_reads(line)
    if got != expected:  # only a common name, spelled so, reads without the memo
        colon = line.find(":")
        assert line[:colon] in COMMON_NAMES
        assert got == header_key(line[:colon])


def test_a_name_the_parser_has_met_reads_as_its_key() -> None:
    assert name_key("X-Sipfleet-Test: 1") == ""  # not met: the parser checks it
    header_key("X-Sipfleet-Test")
    assert name_key("X-Sipfleet-Test: 1") == "x-sipfleet-test"
    assert name_key(f"X-{'y' * 40}: long") == ""  # past the short scan: found by find
    header_key(f"X-{'y' * 40}")
    assert name_key(f"X-{'y' * 40}: long") == f"x-{'y' * 40}"
    assert name_key("Via : blank before the colon") == _key_as_the_parser_reads("Via : x")
    assert name_key("no colon at all") == ""


def test_the_head_ends_at_the_last_blank_line() -> None:
    """Where ``find`` puts it when the body holds no blank line; past it when the body
    does, and then the head holds an empty line, which no header name reads."""
    head = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 0"
    assert head_end_of(head + "\r\n\r\n") == len(head)
    assert head_end_of(head + "\r\n\r\nv=0\r\n") == len(head)
    text = head + "\r\n\r\n--b\r\nX: 1\r\n\r\nhi"
    end = head_end_of(text)
    assert end > len(head)
    assert "" in text[:end].split("\r\n")
    assert name_key("") == ""
    assert head_end_of(head) == -1
