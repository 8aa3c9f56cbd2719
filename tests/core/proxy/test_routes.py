"""Route preprocessing (§16.4) and next-hop routing (§16.6 steps 6-7)."""

from __future__ import annotations

from sipfleet.core.proxy.addresses import OwnAddresses
from sipfleet.core.proxy.routes import preprocess_routes, route_toward_next_hop, take_our_route
from tests.core.proxy.messages import request

OWN = OwnAddresses.build([("192.0.2.1", 5060)], aliases=["proxy.example.com"])


def test_our_loose_route_is_removed() -> None:
    req = request(extra=("Route: <sip:192.0.2.1;lr>, <sip:lb.example.com;lr>",))
    assert preprocess_routes(req, OWN) is True
    assert req.header_values("route") == ["<sip:lb.example.com;lr>"]


def test_our_route_is_returned_with_its_parameters_and_only_it_is_removed() -> None:
    req = request(
        extra=(
            'Route: "Proxy, the" <sip:192.0.2.1;lr;dt=abc>;x=1 , <sip:lb.example.com;lr>',
            "Route: <sip:192.0.2.7;lr>",
        )
    )
    ours = take_our_route(req, OWN)
    assert ours is not None
    assert (ours.host, ours.params) == ("192.0.2.1", {"lr": None, "dt": "abc"})
    assert req.header_values("route") == ["<sip:lb.example.com;lr>", "<sip:192.0.2.7;lr>"]
    top = req.top_route
    assert top is not None
    assert top.uri_text == "sip:lb.example.com;lr"


def test_an_alias_names_us_too() -> None:
    req = request(extra=("Route: <sip:proxy.example.com;lr>",))
    assert preprocess_routes(req, OWN) is True
    assert not req.has("route")


def test_someone_elses_route_stays() -> None:
    req = request(extra=("Route: <sip:192.0.2.1:5070;lr>",))
    assert preprocess_routes(req, OWN) is False
    assert req.header_values("route") == ["<sip:192.0.2.1:5070;lr>"]


def test_a_strict_router_put_our_uri_in_the_request_uri() -> None:
    # The UAC's real target is the last Route (§16.4, strict routing upstream).
    req = request(
        uri="sip:192.0.2.1;lr",
        extra=("Route: <sip:10.0.0.9;lr>, <sip:bob@198.51.100.20>",),
    )
    assert preprocess_routes(req, OWN) is True
    assert req.uri_text == "sip:bob@198.51.100.20"
    assert req.header_values("route") == ["<sip:10.0.0.9;lr>"]


def test_a_request_addressed_to_a_user_at_our_address_keeps_its_uri() -> None:
    req = request(uri="sip:bob@192.0.2.1")
    assert preprocess_routes(req, OWN) is False
    assert req.uri_text == "sip:bob@192.0.2.1"


def test_maddr_naming_us_is_removed_with_its_transport() -> None:
    req = request(uri="sip:bob@example.com;maddr=192.0.2.1;transport=udp")
    preprocess_routes(req, OWN)
    assert req.uri_text == "sip:bob@example.com"


def test_next_hop_is_the_loose_top_route() -> None:
    req = request(extra=("Route: <sip:10.0.0.9:5070;lr>",))
    hop = route_toward_next_hop(req)
    assert str(hop) == "sip:10.0.0.9:5070;lr"
    assert req.uri_text == "sip:bob@example.com"


def test_next_hop_without_routes_is_the_request_uri() -> None:
    assert str(route_toward_next_hop(request())) == "sip:bob@example.com"


def test_toward_a_strict_router_the_request_uri_moves_to_the_end() -> None:
    req = request(extra=("Route: <sip:10.0.0.9>, <sip:10.0.0.10;lr>",))
    hop = route_toward_next_hop(req)
    assert str(hop) == "sip:10.0.0.9"
    assert req.uri_text == "sip:10.0.0.9"
    assert req.header_values("route") == ["<sip:10.0.0.10;lr>", "<sip:bob@example.com>"]
