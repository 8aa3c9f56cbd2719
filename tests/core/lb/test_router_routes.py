"""The Router reads Route URIs through a memo keyed by their text, a flow token (user
part) and a proxy's dialog token (``dt``) cut out: what it reads must be what parsing
each URI says, whatever came before."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipfleet.core.lb.router import MAX_ROUTE_URIS, Forward, Reject, Router, RouteUri
from sipfleet.sip import ParseError, SipUri
from sipfleet.sip.address import Address
from sipfleet.sip.dialog_token import Dialog
from sipfleet.sip.flow import Flow
from tests.core.lb.messages import INTERNAL, LB_ID, PUBLIC, TOKENS, from_proxy, request, router


def expected(route: Address, lb: Router) -> tuple[RouteUri, str | None]:
    """What Route.uri, parsed afresh, says (as the Router read it before the memo)."""
    uri = route.uri
    if not isinstance(uri, SipUri):
        return RouteUri(False, False, "", 0), None
    ours = lb.sides.is_ours(uri)
    read = RouteUri(True, ours, uri.host_bare, uri.port or 5060)
    return read, uri.user


def read_route(route: Address, lb: Router) -> tuple[RouteUri, str | None]:
    return lb._read_route(route)


TOKEN_CHARS = "ABCXYZabcxyz0189-_"
users = st.one_of(
    st.none(),
    st.text(TOKEN_CHARS, min_size=1, max_size=12),
    st.sampled_from(["alice", "a%40b", "bob:secret", "ab{c", "x y", "a;b", "", "@", "é", "-"]),
)
hosts = st.sampled_from(
    [PUBLIC, INTERNAL, "127.0.0.1", "[::1]", "example.com", "-bad", "[nope", "a b", "", "10.0.0.1"]
)
ports = st.sampled_from(["", ":5060", ":5061", ":5080", ":0", ":99999", ":x", ":"])
# What comes before a last parameter's value: the memo may cut a dt value out
before_values = st.sampled_from(
    [";dt=", ";lr;dt=", ";DT=", "?h=1;dt=", ";x;dt=", ";dtx=", ";lr", "", "@x;dt=", ";=x;dt="]
)
values = st.one_of(
    st.text(TOKEN_CHARS, max_size=12),
    st.sampled_from(["a=b", "a?x", "a;x", "a b", "é", "%41", "a@b", ";lr"]),
)
schemes = st.sampled_from(
    ["sip", "sips", "SIP", "Sip", "tel", "http", "si p", "", "\x00sip", "\x00usip", "\x00dsip"]
)


@st.composite
def sibling_uris(draw: st.DrawFn) -> tuple[str, str]:
    """Two URI texts alike but for their user part and last parameter's value (what the
    memo may cut out of its key): the second is read after the first is remembered."""
    scheme, host, port, before = draw(schemes), draw(hosts), draw(ports), draw(before_values)
    if scheme == "tel":
        return "tel:+1-555" + before + draw(values), "tel:bad!" + before + draw(values)

    def one() -> str:
        user = draw(users)
        userinfo = "" if user is None else user + "@"
        return f"{scheme}:{userinfo}{host}{port}{before}{draw(values)}"

    return one(), one()


@settings(max_examples=1500, deadline=None)
@given(pairs=st.lists(sibling_uris(), min_size=1, max_size=4))
def test_a_route_uri_reads_as_its_parse_says_whatever_came_before(
    pairs: list[tuple[str, str]],
) -> None:
    lb = router()
    for first, second in pairs:
        for text in (first, second):
            assert outcome(read_route, text, lb) == outcome(expected, text, lb)


def outcome(
    read: Callable[[Address, Router], tuple[RouteUri, str | None]], text: str, lb: Router
) -> tuple[RouteUri, str | None] | tuple[str, int]:
    """What ``read`` gives for a Route of URI ``text``, or the refusal it raises."""
    try:
        return read(Address(text), lb)
    except ParseError as refused:
        return refused.reason, refused.status


def test_each_dialog_is_steered_by_its_own_token_at_the_same_lb_address() -> None:
    lb = router()
    ends = {}
    for port in (40000, 40001, 40002):
        flow = Flow("udp", "198.51.100.7", port, 0, 0, True, LB_ID)
        token = TOKENS.encode(flow, Dialog("call-1@10.0.1.2", "a1"))
        ends[port] = (f"<sip:{token}@{INTERNAL}:5060;lr>", f"<sip:{token}@{PUBLIC}:5060;lr>")
    for port in (40000, 40001, 40002, 40000):
        bye = request("BYE", "sip:alice@10.0.1.2", routes=ends[port], to_tag="a1")
        bye.set_header("From", "<sip:bob@example.com>;tag=b9")
        decision = lb.route(bye, from_proxy())
        assert isinstance(decision, Forward), decision
        assert decision.destination.port == port


def test_a_forged_token_beside_a_good_one_is_still_refused() -> None:
    lb = router()
    flow = Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID)
    good = TOKENS.encode(flow, Dialog("call-1@10.0.1.2", "a1"))
    forged = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    for token, verdict in ((good, Forward), (forged, Reject), (good, Forward)):
        route = f"<sip:{token}@{INTERNAL}:5060;lr>"
        bye = request("BYE", "sip:alice@10.0.1.2", routes=(route,), to_tag="a1")
        bye.set_header("From", "<sip:bob@example.com>;tag=b9")
        assert isinstance(lb.route(bye, from_proxy()), verdict)


def test_a_route_the_parser_refuses_is_refused_after_a_good_one_at_the_same_address() -> None:
    lb = router()
    token = TOKENS.encode(Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID))
    lb.route(request("BYE", routes=(f"<sip:{token}@{PUBLIC}:5060;lr>",), to_tag="b"), from_proxy())
    bad = request("BYE", routes=(f"<sip:{token}{{@{PUBLIC}:5060;lr>",), to_tag="b")
    with pytest.raises(ParseError):
        lb.route(bad, from_proxy())


def test_the_route_memo_stays_bounded() -> None:
    lb = router()
    for n in range(MAX_ROUTE_URIS + 50):
        read_route(Address(f"sip:{n // 250}.{n % 250}.0.1:5060;lr"), lb)
    assert len(lb._route_uris) <= MAX_ROUTE_URIS


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (f"sip:tok@{PUBLIC};lr", f"sips:tok@{PUBLIC};lr"),  # sips: 5061 by default, not ours
        (f"sip:tok@{PUBLIC};lr", f"\x00usip:{PUBLIC};lr"),  # no URI text at all
        (f"sip:{PUBLIC};lr;dt=abc", f"\x00dsip:{PUBLIC};lr;dt="),
        (f"sip:{PUBLIC};lr;dt=abc", f"sip:{PUBLIC};lr;dt="),  # an empty value is refused
        (f"sip:tok@{PUBLIC};lr", f"sip:@{PUBLIC};lr"),  # an empty user part is refused
        (f"sip:tok@{PUBLIC};lr;dt=abc", f"sip:tok@{PUBLIC};lr;dt="),
    ],
)
def test_texts_that_differ_in_what_is_cut_out_are_read_each_as_itself(
    first: str, second: str
) -> None:
    lb = router()
    for text in (first, second, first):
        assert outcome(read_route, text, lb) == outcome(expected, text, lb)
