"""The first element of a list header, read and removed without splitting the rest:
``split_first``, ``first_value``, ``top_via`` (parsed alone) and ``pop_first_value``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipfleet.sip import ParseError, Request, parse_message
from sipfleet.sip.grammar import WS, split_first, split_outside_quotes, split_values
from tests.sip.corpus import INVITE, RESPONSE_180, sip

HEAD = """\
SIP/2.0 200 OK
Via: {vias}
From: <sip:a@example.com>;tag=1
To: <sip:b@example.com>;tag=2
Call-ID: c1
CSeq: 1 OPTIONS
"""


def response(vias: str, extra: str = ""):  # type: ignore[no-untyped-def]
    return parse_message(sip(HEAD.format(vias=vias) + extra))


@pytest.mark.parametrize(
    ("text", "first", "rest"),
    [
        ("a", "a", ""),
        ("  a  ", "a", ""),
        ("a, b, c", "a", " b, c"),
        ("a,b", "a", "b"),
        (" , a, b", "a", " b"),
        (",,", "", ""),
        ("", "", ""),
        ('"x, y" <sip:a@b>, <sip:c@d>', '"x, y" <sip:a@b>', " <sip:c@d>"),
        ("<sip:a@b;p=1,2>;q=1, <sip:c@d>", "<sip:a@b;p=1,2>;q=1", " <sip:c@d>"),
        ('SIP/2.0/UDP h;x="a,b", SIP/2.0/UDP g', 'SIP/2.0/UDP h;x="a,b"', " SIP/2.0/UDP g"),
    ],
)
def test_split_first(text: str, first: str, rest: str) -> None:
    assert split_first(text) == (first, rest)


ELEMENT = st.one_of(
    st.sampled_from(["", " ", "a", "SIP/2.0/UDP h:1;branch=z9hG4bKx", "<sip:a@b;lr>"]),
    st.sampled_from(['"x, y" <sip:a@b>', "<sip:a,b@c>;p=1", 'h;p="q,r"', "\t b \t"]),
    st.text(alphabet="ab;=<>@ \t", max_size=8).filter(lambda t: '"' not in t),
)


@given(st.lists(ELEMENT, max_size=6))
@settings(max_examples=400, deadline=None)
def test_split_first_agrees_with_split_values(elements: list[str]) -> None:
    text = ",".join(elements)
    try:
        values = split_values(text)
    except ParseError:
        return  # an unbalanced '<' may hide commas: split_values decides, not compared
    first, rest = split_first(text)
    assert first == (values[0] if values else "")
    if values:
        assert split_values(rest) == values[1:]


def scanned_split_first(text: str) -> tuple[str, str]:
    """What ``split_first`` returns, cut by the general splitter alone (the reference for
    its shortcut that finds the cut after a ``<...>`` without the scan)."""
    while "," in text:
        parts = split_outside_quotes(text, ",", 1)
        if len(parts) == 1:
            break
        first, rest = parts[0].strip(WS), parts[1]
        if first:
            return first, rest
        text = rest
    return text.strip(WS), ""


@given(st.lists(ELEMENT, max_size=6), st.text(alphabet="a<>,; \t", max_size=12))
@settings(max_examples=600, deadline=None)
def test_split_first_cuts_where_the_scan_does(elements: list[str], odd: str) -> None:
    for text in (",".join(elements), odd, odd + "<sip:a,b@c;lr>" + odd, "<a>" + odd):
        try:
            expected = scanned_split_first(text)
        except ParseError as refused:  # an unterminated quoted string
            with pytest.raises(ParseError, match=refused.reason):
                split_first(text)
            continue
        assert split_first(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<sip:t@h;lr>, <sip:p;lr>",
        " <sip:a,b@c;lr>;x=1 ,<sip:d>",
        "<a>>,b",
        "<sip:a>",
        "x <a,b>,c",
        '<sip:a@b>;p="x,y", <sip:c>',
    ],
)
def test_the_first_element_of_a_route_list(text: str) -> None:
    first, rest = split_outside_quotes(text, ",", 1) if "," in text else (text, "")
    assert split_first(text) == (first.strip(" \t"), rest)


def test_first_value_reads_only_the_first_element() -> None:
    msg = response("SIP/2.0/UDP ours:5060;branch=z9hG4bK1, SIP/2.0/UDP theirs;branch=z9hG4bK2")
    assert msg.first_value("via") == "SIP/2.0/UDP ours:5060;branch=z9hG4bK1"
    assert msg.first_value("v") == "SIP/2.0/UDP ours:5060;branch=z9hG4bK1"
    assert msg.first_value("route") is None
    empty_first_line = response("SIP/2.0/UDP a;branch=z9hG4bK1", "Via: ,\n")
    assert empty_first_line.first_value("via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    blank_then_value = parse_message(
        sip(HEAD.format(vias=",") + "Via: SIP/2.0/UDP b;branch=z9hG4bK2\n")
    )
    assert blank_then_value.first_value("via") == "SIP/2.0/UDP b;branch=z9hG4bK2"


def test_top_via_does_not_parse_the_others() -> None:
    msg = response("SIP/2.0/UDP ours:5060;branch=z9hG4bK1, not a via at all")
    assert msg.top_via.host == "ours"
    with pytest.raises(ParseError):
        msg.vias  # noqa: B018 - the whole list is checked when it is asked for


def test_vias_reuse_the_top_via_and_edits_drop_both() -> None:
    msg = parse_message(RESPONSE_180)
    top = msg.top_via
    assert msg.vias[0] is top
    msg.pop_via()
    assert msg.top_via is not top
    assert msg.top_via.host == "pc33.atlanta.example.com"
    assert [v.host for v in msg.vias] == ["pc33.atlanta.example.com"]


def test_top_via_after_vias_and_push() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    vias = msg.vias
    assert msg.top_via is vias[0]
    msg.push_via("SIP/2.0/UDP p.example.com;branch=z9hG4bKp")
    assert msg.top_via.host == "p.example.com"
    assert len(msg.vias) == len(vias) + 1


def test_missing_via() -> None:
    msg = parse_message(sip("OPTIONS sip:a@b SIP/2.0\nCall-ID: x\n"))
    with pytest.raises(ParseError, match="Missing Via header"):
        msg.top_via  # noqa: B018
    assert msg.first_value("via") is None


@pytest.mark.parametrize(
    ("vias", "popped", "line_after"),
    [
        ("a;branch=z9hG4bK1, b;branch=z9hG4bK2", "a;branch=z9hG4bK1", "Via: b;branch=z9hG4bK2"),
        ("a;branch=z9hG4bK1 ,  b , c", "a;branch=z9hG4bK1", "Via: b , c"),
        ("a;branch=z9hG4bK1, , b", "a;branch=z9hG4bK1", "Via: b"),
        ("a;branch=z9hG4bK1,", "a;branch=z9hG4bK1", None),
        ("a;branch=z9hG4bK1", "a;branch=z9hG4bK1", None),
    ],
)
def test_pop_first_value_keeps_the_rest_of_the_line_as_it_was(
    vias: str, popped: str, line_after: str | None
) -> None:
    msg = response(vias)
    assert msg.pop_first_value("via") == popped
    via_lines = [line for line in msg.lines if line.startswith("Via")]
    assert via_lines == ([line_after] if line_after else [])
    reparsed = parse_message(msg.serialize())
    assert reparsed.header_values("via") == split_values(vias)[1:]


def test_pop_first_value_of_a_folded_line() -> None:
    msg = response("a;branch=z9hG4bK1,\n b;branch=z9hG4bK2")
    assert msg.pop_first_value("via") == "a;branch=z9hG4bK1"
    assert msg.header_values("via") == ["b;branch=z9hG4bK2"]
    assert "\n" not in "".join(msg.lines)


@pytest.mark.parametrize(
    "vias",
    [
        "SIP/2.0/UDP ours:5060;branch=z9hG4bK1, SIP/2.0/UDP next:5062;branch=z9hG4bK2, x",
        "SIP/2.0/UDP ours:5060;branch=z9hG4bK1 ,SIP/2.0/UDP next:5062;branch=z9hG4bK2 ",
        'SIP/2.0/UDP ours:5060;branch=z9hG4bK1, SIP/2.0/UDP next:5062;branch=z9hG4bK2;x="a,b"',
        "SIP/2.0/UDP ours:5060;branch=z9hG4bK1\nVia: SIP/2.0/UDP next:5062;branch=z9hG4bK2",
    ],
)
def test_top_via_after_a_pop_is_the_next_one_as_a_fresh_parse_reads_it(vias: str) -> None:
    """A pop from a joined line hands the next Via's text to top_via (a relay's step)."""
    msg = response(vias)
    msg.pop_first_value("via")
    fresh = parse_message(msg.serialize())
    assert msg.top_via.host == fresh.top_via.host == "next"
    assert str(msg.top_via) == str(fresh.top_via)
    assert msg.top_via.params == fresh.top_via.params


def test_an_edit_after_a_pop_drops_the_next_via_text() -> None:
    msg = response("SIP/2.0/UDP ours;branch=z9hG4bK1, SIP/2.0/UDP next;branch=z9hG4bK2")
    msg.pop_first_value("via")
    msg.push_via("SIP/2.0/UDP pushed;branch=z9hG4bK3")
    assert msg.top_via.host == "pushed"
    msg.pop_first_value("via")
    msg.set_header("via", "SIP/2.0/UDP replaced;branch=z9hG4bK4")
    assert msg.top_via.host == "replaced"


def test_pop_first_value_only_when_accepted() -> None:
    """A relay pops the top Via only when it is its own; another one stays as it came."""
    vias = "SIP/2.0/UDP ours;branch=z9hG4bK1, SIP/2.0/UDP next;branch=z9hG4bK2"
    msg = response(vias)
    before = msg.serialize()
    assert msg.pop_first_value("via", lambda text: "theirs" in text) is None
    assert msg.serialize() == before
    assert msg.top_via.host == "ours"
    assert msg.pop_first_value("via", lambda text: "ours" in text) == vias.split(", ")[0]
    assert msg.top_via.host == "next"
