"""§16.6 steps 1-7 for one target: the copy to forward, and the URI to send it to.

Step 8 (our Via) comes last, once the transport of the next hop is known; step 9-10
(send, Timer C) are the engine's.
"""

from __future__ import annotations

from collections.abc import Iterable

from sipfleet.core.proxy.routes import route_toward_next_hop
from sipfleet.core.proxy.targets import Target
from sipfleet.sip.message import Request
from sipfleet.sip.uri import SipUri, Uri, parse_uri

Header = tuple[str, str]

# Requests that may create a dialog (RFC 3261 INVITE, RFC 6665 SUBSCRIBE, RFC 3515 REFER).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


def wants_record_route(request: Request) -> bool:
    """§16.6 step 4 applies to requests that may create a dialog; in-dialog requests
    keep the route set the dialog has."""
    return request.method in DIALOG_CREATING and request.to.tag is None


def forward_copy(
    request: Request,
    target: Target,
    *,
    record_route: str | None,
    headers: Iterable[Header] = (),
) -> tuple[Request, Uri]:
    """Copy ``request`` for ``target``: Request-URI, Max-Forwards, Record-Route, the
    target's Route values, extra headers, strict-router rewrite. Returns the copy and
    the URI of the next hop. Raises ParseError for a target URI that does not parse."""
    copy: Request = request.copy()
    if target.uri is not None:
        copy.uri = parse_uri(target.uri, allow_other_schemes=False)
    copy.decrement_max_forwards()
    if record_route is not None:
        copy.add_record_route(record_route)
    for route in reversed(target.routes):
        copy.push_route(route)
    for name, value in headers:
        copy.add_header(name, value)
    next_hop = route_toward_next_hop(copy)
    if target.received is not None and "route" not in copy.keys:
        next_hop = _received(target.received, next_hop)
    return copy, next_hop


def _received(received: str, contact: Uri) -> Uri:
    """Where a phone behind a NAT registered from, over the contact's transport."""
    uri = parse_uri(received, allow_other_schemes=False)
    transport = contact.params.get("transport") if isinstance(contact, SipUri) else None
    if isinstance(uri, SipUri) and transport and "transport" not in uri.params:
        uri = uri.replace(params={**uri.params, "transport": transport})
    return uri
