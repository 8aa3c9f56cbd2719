"""The Router reads Route URIs through a memo keyed by their text, a flow token's user
part cut out: what it reads must be what parsing each URI says, whatever came before."""

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
    st.sampled_from(["alice", "a%40b", "bob:secret", "ab{c", "x y", "a;b", "", "@", "é"]),
)
hosts = st.sampled_from(
    [PUBLIC, INTERNAL, "127.0.0.1", "[::1]", "example.com", "-bad", "[nope", "a b", "", "10.0.0.1"]
)
ports = st.sampled_from(["", ":5060", ":5061", ":5080", ":0", ":99999", ":x", ":"])
params = st.sampled_from(["", ";lr", ";lr;transport=tcp", ";lr;ob", ";=x", ";lr?h=v", "@x"])
schemes = st.sampled_from(["sip", "sips", "SIP", "Sip", "tel", "http", "si p", ""])


@st.composite
def uri_texts(draw: st.DrawFn) -> str:
    scheme = draw(schemes)
    if scheme == "tel":
        return "tel:" + draw(st.sampled_from(["+1-555", "bad!", ""]))
    user = draw(users)
    userinfo = "" if user is None else user + "@"
    return f"{scheme}:{userinfo}{draw(hosts)}{draw(ports)}{draw(params)}"


SHARED = router()  # one Router for every example: what one read leaves must not mislead the next


@settings(max_examples=600, deadline=None)
@given(texts=st.lists(uri_texts(), min_size=1, max_size=6))
def test_a_route_uri_reads_as_its_parse_says_whatever_came_before(texts: list[str]) -> None:
    for text in texts:
        assert outcome(read_route, text) == outcome(expected, text)


def outcome(
    read: Callable[[Address, Router], tuple[RouteUri, str | None]], text: str
) -> tuple[RouteUri, str | None] | tuple[str, int]:
    """What ``read`` gives for a Route of URI ``text``, or the refusal it raises."""
    try:
        return read(Address(text), SHARED)
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
