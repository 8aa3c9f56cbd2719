"""Route handling: §16.4 preprocessing of a received request, §16.6 steps 6-7 for a
forwarded copy. Pure functions that edit the request they are given.

Preprocessing removes what addressed this proxy: a strict router upstream put our
Record-Route URI into the Request-URI (restore the real one from the last Route), a
loose router left our URI as the top Route (pop it), and a ``maddr`` naming us is
dropped with the port and transport that went with it.

Forwarding toward a strict router (a Route URI without ``lr``) follows §16.6 step 6:
the Request-URI goes to the end of the Route set and the strict router's URI becomes
the Request-URI. The next hop is then the top Route, else the Request-URI.
"""

from __future__ import annotations

from sipfleet.core.proxy.addresses import OwnAddresses
from sipfleet.sip.address import Address, parse_address
from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import WS
from sipfleet.sip.message import Request
from sipfleet.sip.uri import SipUri, Uri, parse_uri


def preprocess_routes(request: Request, own: OwnAddresses) -> bool:
    """§16.4. Returns True when the request reached us through a Route of ours (or a
    strict router's Request-URI): it belongs to a dialog this proxy record-routed."""
    return take_our_route(request, own) is not None


def take_our_route(request: Request, own: OwnAddresses) -> SipUri | None:
    """§16.4, returning the URI of ours the request was routed by (the Route removed, or
    a strict router's Request-URI), with the parameters our Record-Route gave it; None
    when the request did not come through a Route of ours."""
    ours: SipUri | None = None
    uri = request.uri
    if isinstance(uri, SipUri):
        if uri.user is None and own.names(uri) and "route" in request.keys:
            _restore_request_uri(request)
            ours = uri
        elif "maddr" in uri.params:
            _drop_own_maddr(request, uri, own)
    top = request.top_route
    if top is not None and _names_us(top, own):
        popped = request.pop_first_value("route")
        if popped is not None and popped.strip(WS) != top.raw:
            parse_address(popped, "Route")  # what pop_route raises for; the same text parsed
        ours = top.sip_uri
    return ours


def _restore_request_uri(request: Request) -> None:
    """A strict router upstream: the last Route holds the Request-URI the UAC meant."""
    values = request.header_values("route")
    last = parse_address(values[-1], "Route")
    request.uri = parse_uri(last.uri_text, allow_other_schemes=False)
    request.remove_header("route")
    if len(values) > 1:
        request.add_header("route", ", ".join(values[:-1]), top=True)


def _drop_own_maddr(request: Request, uri: SipUri, own: OwnAddresses) -> None:
    maddr = uri.params.get("maddr") or ""
    try:
        names_us = own.names(SipUri(uri.scheme, None, None, maddr, uri.port))
    except ParseError:
        return
    if names_us:
        params = {k: v for k, v in uri.params.items() if k not in ("maddr", "transport")}
        request.uri = uri.replace(port=None, params=params)


def _names_us(route: Address, own: OwnAddresses) -> bool:
    try:
        uri = route.uri
    except ParseError:
        return False
    return isinstance(uri, SipUri) and own.names(uri)


def route_toward_next_hop(request: Request) -> Uri:
    """§16.6 steps 6-7 on a copy being forwarded: strict-router rewrite when needed, then
    the URI to send to (top Route, else Request-URI). Raises ParseError for a Route
    that does not parse."""
    top = request.top_route
    if top is None:
        return request.uri
    uri = top.uri
    if isinstance(uri, SipUri) and not uri.is_loose_router:
        request.pop_route()
        request.add_header("route", f"<{request.uri_text}>")
        request.uri = uri
        return uri
    return uri
