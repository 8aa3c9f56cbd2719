"""Requests and the LB under test, for the sans-IO tests of core/lb."""

from __future__ import annotations

from sipfleet.config.listen import parse_listen
from sipfleet.core.lb.pools import Pools
from sipfleet.core.lb.router import Router
from sipfleet.core.lb.sides import Sides
from sipfleet.sip import Request, parse_message
from sipfleet.sip.flow import FlowTokens
from sipfleet.storage.model import LbTarget
from sipfleet.transport.base import Peer

PUBLIC = "203.0.113.10"
INTERNAL = "127.0.0.1"
TOKENS = FlowTokens(b"test-secret")
LB_ID = 7
REGISTRAR = "sip:127.0.0.1:5070"
PROXIES = ("sip:127.0.0.1:5080", "sip:127.0.0.1:5081")
# A body holding a blank line and header-like lines, as a multipart body does: the fast
# paths cut the head at the last blank line (sip/headlines.head_end_of), so a message
# with it must go the parsed way.
MULTIPART = b"--b\r\nContent-Type: text/plain\r\nVia: SIP/2.0/UDP 10.9.9.9\r\n\r\nhi\r\n--b--\r\n"


def two_sides() -> Sides:
    return Sides(
        [parse_listen(f"udp:{PUBLIC}:5060"), parse_listen(f"tcp:{PUBLIC}:5060")],
        [parse_listen(f"udp:{INTERNAL}:5060"), parse_listen(f"tcp:{INTERNAL}:5060")],
    )


def one_side() -> Sides:
    return Sides([parse_listen(f"udp:{INTERNAL}:5060"), parse_listen(f"tcp:{INTERNAL}:5060")])


def pools(*proxies: str, draining: tuple[str, ...] = ()) -> Pools:
    made = Pools(probe_interval=1.0)
    rows = [LbTarget(1, "registrar", REGISTRAR, 1, "active")]
    for at, uri in enumerate(proxies or PROXIES, start=2):
        rows.append(LbTarget(at, "proxy", uri, 1, "draining" if uri in draining else "active"))
    made.update(rows)
    return made


def router(
    sides: Sides | None = None,
    made: Pools | None = None,
    *,
    worker: int = 0,
    connections: tuple[int, ...] = (),
) -> Router:
    return Router(
        sides or two_sides(),
        TOKENS,
        made or pools(),
        lb_id=LB_ID,
        worker=worker,
        has_connection=lambda connection: connection in connections,
    )


def client(host: str = "198.51.100.7", port: int = 40000, *, tcp: int | None = None) -> Peer:
    """A client on the public side (a NAT's address, as the LB sees it)."""
    if tcp is not None:
        return Peer("tcp", host, port, PUBLIC, 5060, tcp)
    return Peer("udp", host, port, PUBLIC, 5060)


def from_proxy(port: int = 5080) -> Peer:
    return Peer("udp", INTERNAL, port, INTERNAL, 5060)


def request(
    method: str,
    uri: str = "sip:bob@example.com",
    *,
    via: str = "10.0.1.2:5060;rport",
    transport: str = "UDP",
    to_tag: str | None = None,
    call_id: str = "call-1@10.0.1.2",
    contact: str | None = "<sip:alice@10.0.1.2:5060>",
    routes: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via};branch=z9hG4bK-test",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=a1",
        f"To: <sip:bob@example.com>{f';tag={to_tag}' if to_tag else ''}",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        *([f"Contact: {contact}"] if contact else []),
        *[f"Route: {route}" for route in routes],
        *extra,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message
