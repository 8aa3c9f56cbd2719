"""The proxy's fast path for the ACK of a 2xx (core/proxy/fastack.py) against the present
path: a ProxyEngine on a loopback socket (``build_engine``, a temporary SQLite database),
each ACK handed to it twice, once through ``ProxyEngine.relay`` and once parsed, as the
endpoint hands it without the shortcut. Loopback delivers a datagram before ``sendto``
returns, so what the next hops and the caller got is read at once.

The ACKs are written as sipp writes them (every Route on one line, after the Via) and as
phones do (one Route per line after Max-Forwards, a User-Agent, a body)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.engine import ProxyEngine
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.privacy_hooks import PrivacyHooks
from sipfleet.roles.proxy import build_engine
from sipfleet.sip import ParseError, Request, parse_message
from sipfleet.sip.dialog_token import Dialog
from sipfleet.storage import Storage
from sipfleet.transport.base import Peer
from tests.core.lb.test_fastpath_requests import Socket, _delta
from tests.core.proxy.harness import make_config

CALL_ID = "1-4242@127.0.0.1"
FROM_TAG = "1SIPpTag001"
TO_TAG = "b2c9f0e1-7a"


@dataclass
class Proxy:
    engine: ProxyEngine
    endpoint: SipEndpoint
    port: int
    caller: Socket  # sends the ACKs
    callee: Socket  # the Request-URI
    hop: Socket  # a Route after ours (an LB's)
    taken: list[bytes] = field(default_factory=list)

    @property
    def peer(self) -> Peer:
        return Peer("udp", self.caller.host, self.caller.port, "127.0.0.1", self.port)

    def token(self, call_id: str = CALL_ID, from_tag: str = FROM_TAG) -> str:
        return self.engine.dialog_tokens.token(Dialog(call_id, from_tag))

    def ours(self, token: str = "", params: str = "") -> str:
        """Our Record-Route as the proxy wrote it in the INVITE, with its dialog token."""
        return f"<sip:127.0.0.1:{self.port};lr;dt={token or self.token()}{params}>"

    @property
    def next_route(self) -> str:
        return f"<sip:127.0.0.1:{self.hop.port};lr>"

    @property
    def request_uri(self) -> str:
        return f"sip:bob@127.0.0.1:{self.callee.port}"

    def counts(self) -> dict[str, Any]:
        return {
            **{f"engine {k}": v for k, v in self.engine.counters().items()},
            **{f"endpoint {k}": v for k, v in self.endpoint.counters().items()},
            **{f"forwarder {k}": v for k, v in self.engine.forwarder.counters().items()},
            **{f"method {k}": v for k, v in self.endpoint.requests_by_method.items()},
        }

    def got(self) -> list[list[bytes]]:
        return [each.drain() for each in (self.callee, self.hop, self.caller)]

    def compare(self, data: bytes) -> bool:
        """``data`` from the caller through the fast path, then the present one: when the
        fast path took it, every socket got the same from both, counted the same; when it
        declined, it did nothing at all. Header names made known first, as a running
        proxy knows them."""
        learn(data)
        before = self.counts()
        taken = self.engine.relay(data, self.peer)
        fast = (self.got(), _delta(before, self.counts()))
        if not taken:
            assert fast == ([[], [], []], {})
            return False
        before = self.counts()
        self.present(data)
        present = (self.got(), _delta(before, self.counts()))
        assert fast == present
        self.taken.append(data)
        return True

    def present(self, data: bytes) -> None:
        with self.present_path():
            self.endpoint.frame_received(data, self.peer)

    def present_counts(self, data: bytes) -> tuple[list[list[bytes]], dict[str, Any]]:
        before = self.counts()
        self.present(data)
        return self.got(), _delta(before, self.counts())

    @contextlib.contextmanager
    def present_path(self) -> Iterator[None]:
        self.endpoint.shortcut = None
        try:
            yield
        finally:
            self.endpoint.shortcut = self.engine


def learn(data: bytes) -> None:
    """The header names of ``data`` made known to the parser's memo, as a running proxy
    has met them (a name it has not met is left to the parser)."""
    with contextlib.suppress(ParseError):
        parse_message(data)


@asynccontextmanager
async def proxy(storage: Storage, hooks: MessageHooks = NO_HOOKS) -> AsyncIterator[Proxy]:
    caller, callee, hop = Socket(), Socket(), Socket()
    endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
    engine = build_engine(make_config(), storage, endpoint, hooks=hooks)
    endpoint.handler = engine
    await endpoint.start()
    made = Proxy(engine, endpoint, endpoint.addresses[0].port, caller, callee, hop)
    try:
        # the first request sets the engine up (its listeners, the overload watch)
        made.present(ack(made, routes=[]))
        made.got()
        yield made
    finally:
        await engine.close()
        await endpoint.close()
        for each in (caller, callee, hop):
            each.sock.close()


def ack(
    p: Proxy,
    *,
    routes: Sequence[str],
    uri: str = "",
    via: str = "",
    max_forwards: str = "Max-Forwards: 70",
    from_tag: str = FROM_TAG,
    call_id: str = CALL_ID,
    phone: bool = False,
    extra: Sequence[str] = (),
    body: bytes = b"",
) -> bytes:
    """The ACK of a 2xx from the caller: sipp's (``routes`` on one line after the Via) or
    a phone's (one per line after Max-Forwards, a User-Agent)."""
    here = f"{p.caller.host}:{p.caller.port}"
    top = via or f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1-5-3"
    if phone:
        head = [top, max_forwards, *(f"Route: {route}" for route in routes), "User-Agent: Ph/1"]
    else:
        head = [top, f"Route: {', '.join(routes)}" if routes else "", max_forwards]
    lines = [
        f"ACK {uri or p.request_uri} SIP/2.0",
        *head,
        f"From: sipp <sip:sipp@{here}>;tag={from_tag}",
        f"To: <sip:bob@127.0.0.1>;tag={TO_TAG}",
        f"Call-ID: {call_id}",
        "CSeq: 1 ACK",
        f"Contact: <sip:sipp@{here}>",
        *extra,
        f"Content-Length: {len(body)}",
    ]
    return "\r\n".join(line for line in lines if line).encode("latin-1") + b"\r\n\r\n" + body


SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


# -- taken ---------------------------------------------------------------------------------
async def test_sipps_ack_goes_to_the_request_uri_from_its_bytes(storage: Storage) -> None:
    async with proxy(storage) as p:
        data = ack(p, routes=[p.ours()])
        learn(data)
        assert p.engine.relay(data, p.peer)
        [forwarded], [], [] = p.got()
        message = parse_message(forwarded)
        assert isinstance(message, Request)
        assert message.method == "ACK"
        assert message.uri_text == p.request_uri
        assert message.routes == []
        ours, theirs = message.vias
        assert (ours.host, ours.port) == ("127.0.0.1", p.port)
        assert ours.branch is not None
        assert ours.branch.endswith(".-1-5-3")
        assert theirs.branch == "z9hG4bK-1-5-3"
        assert message.max_forwards == 69
        assert p.engine.stats.acks_forwarded == 1
        assert p.engine.forwarder.stats.requests_forwarded == 1
        assert p.endpoint.requests_by_method["ACK"] == 2  # the setup's and this one
        assert p.compare(data)


async def test_the_same_as_the_present_path(storage: Storage) -> None:
    async with proxy(storage) as p:
        here = f"{p.caller.host}:{p.caller.port}"
        sdp = ["Content-Type: application/sdp"]
        for data in (
            ack(p, routes=[p.ours()]),
            ack(p, routes=[p.ours(), p.next_route]),  # on one line: the second kept
            ack(p, routes=[p.ours(), p.next_route], phone=True),  # one per line
            ack(p, routes=[p.ours()], phone=True, extra=sdp, body=SDP),  # a late answer
            ack(p, routes=[p.ours()], max_forwards="Max-Forwards: 2"),
            ack(p, routes=[p.ours()], via=f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-9;rport"),
            ack(p, routes=[p.ours()], via="Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKx1"),
            ack(p, routes=[p.ours(), p.next_route, "<sip:127.0.0.1:9;lr>"]),
            ack(p, routes=[p.ours()], via=f"Via: SIP/2.0/TCP {here};branch=z9hG4bK-1"),
        ):
            assert p.compare(data), data
        assert p.engine.stats.acks_forwarded == 2 * len(p.taken)


async def test_the_next_route_is_where_it_goes(storage: Storage) -> None:
    async with proxy(storage) as p:
        data = ack(p, routes=[p.ours(), p.next_route])
        learn(data)
        assert p.engine.relay(data, p.peer)
        [], [forwarded], [] = p.got()
        message = parse_message(forwarded)
        assert [str(route) for route in message.routes] == [p.next_route]


async def test_a_privacy_route_goes_the_present_way(storage: Storage) -> None:
    hooks = PrivacyHooks.from_config(make_config())
    async with proxy(storage, hooks) as p:
        assert p.compare(ack(p, routes=[p.ours()]))  # nothing sealed: the hooks leave it
        assert not p.compare(ack(p, routes=[p.ours(params=";pv=sealed")]))
        assert not p.compare(ack(p, routes=[p.ours(params=";mr=relay1")]))  # media relay


# -- declined --------------------------------------------------------------------------------
async def test_a_token_of_another_dialog_is_dropped_the_present_way(storage: Storage) -> None:
    async with proxy(storage) as p:
        for token in ("Zm9yZ2VkLXRva2Vu", p.token(call_id="other@127.0.0.1")):
            data = ack(p, routes=[p.ours(token)])
            assert not p.compare(data)
            got, counted = p.present_counts(data)
            assert got == [[], [], []]
            assert counted["engine acks_dropped"] == 1
        assert p.engine.stats.acks_forwarded == 0


async def test_max_forwards_1_and_0_go_the_present_way(storage: Storage) -> None:
    async with proxy(storage) as p:
        one = ack(p, routes=[p.ours()], max_forwards="Max-Forwards: 1")
        assert not p.compare(one)
        [[forwarded], [], []], _ = p.present_counts(one)
        assert b"\r\nMax-Forwards: 0\r\n" in forwarded
        zero = ack(p, routes=[p.ours()], max_forwards="Max-Forwards: 0")
        assert not p.compare(zero)
        got, counted = p.present_counts(zero)
        assert got == [[], [], []]
        assert counted["forwarder too_many_hops"] == 1


async def test_a_strict_router_next_goes_the_present_way(storage: Storage) -> None:
    async with proxy(storage) as p:
        strict = f"<sip:127.0.0.1:{p.hop.port}>"
        data = ack(p, routes=[p.ours(), strict])
        assert not p.compare(data)
        [[], [forwarded], []], _ = p.present_counts(data)
        message = parse_message(forwarded)
        assert isinstance(message, Request)
        assert message.uri_text == f"sip:127.0.0.1:{p.hop.port}"  # §16.6 step 6


async def test_host_names_and_the_unusual_are_declined(storage: Storage) -> None:
    async with proxy(storage) as p:
        fast = p.engine.fast_acks
        here = f"{p.caller.host}:{p.caller.port}"
        for data in (
            ack(p, routes=[p.ours()], uri="sip:bob@callee.example.com"),
            ack(p, routes=[p.ours(), "<sip:lb.example.com;lr>"]),
            ack(p, routes=[p.ours()], uri=f"sip:127.0.0.1:{p.port}"),  # names us
            ack(p, routes=[p.ours()], uri=f"sip:bob@127.0.0.1:{p.callee.port};maddr=10.0.0.1"),
            ack(p, routes=[p.ours()], uri=f"sip:bob@127.0.0.1:{p.callee.port};transport=tcp"),
            ack(p, routes=[p.ours()], uri="sip:bob@[::1]:5060"),
            ack(p, routes=[f"<sip:127.0.0.1:{p.port};lr>"]),  # no token
            ack(p, routes=[p.next_route, p.ours()]),  # ours not on top
            ack(p, routes=[f'"x" {p.ours()}']),  # a display name
            ack(p, routes=[p.ours()], max_forwards=""),  # the present path adds 70
            ack(p, routes=[p.ours()], extra=["Expires: 60"]),
            ack(p, routes=[p.ours()], via=f"Via: SIP/2.0/UDP {here};branch=1-5-3"),  # RFC 2543
            ack(p, routes=[p.ours()], extra=["CSeq: 2 ACK"]),
            ack(p, routes=[p.ours()]).replace(b"CSeq: 1 ACK", b"CSeq: 1 INVITE"),
            ack(p, routes=[p.ours()]).replace(b"Content-Length: 0", b"Content-Length: 4"),
            ack(p, routes=[p.ours()]).replace(b"ACK sip", b"BYE sip"),
        ):
            assert fast.take(data, p.peer) is None, data
            assert not p.compare(data), data
        assert fast.taken == 0


async def test_the_ack_of_a_non_2xx_is_its_transactions(storage: Storage) -> None:
    """A re-INVITE (our Route, its token) with a server transaction: the ACK with its
    branch is that transaction's, not a 2xx ACK to send on."""
    async with proxy(storage) as p:
        data = ack(p, routes=[p.ours()])
        invite = parse_message(
            data.replace(b"ACK sip", b"INVITE sip").replace(b"1 ACK", b"1 INVITE")
        )
        assert isinstance(invite, Request)
        p.engine.core.layer.create_server(invite, peer=p.peer.reply_to)
        assert p.engine.fast_acks.take(data, p.peer) is None
        got, counted = p.present_counts(data)
        assert got == [[], [], []]  # absorbed by the transaction
        assert "engine acks_forwarded" not in counted


# -- variants --------------------------------------------------------------------------------
async def test_variants_are_forwarded_as_the_present_path_would(storage: Storage) -> None:
    async with proxy(storage) as p:
        here = f"{p.caller.host}:{p.caller.port}"
        routes = st.sampled_from(
            [[p.ours()], [p.ours(), p.next_route], [p.ours(), f"<sip:127.0.0.1:{p.hop.port}>"]]
        )
        vias = st.sampled_from(
            [
                "",
                f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-77;rport",
                f"Via: SIP/2.0/UDP 10.1.2.3;branch=z9hG4bK-{'a' * 60}",
                f"Via: SIP/2.0/UDP {here} ;branch=z9hG4bK-8",
                f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1-5-3\r\nVia: SIP/2.0/UDP 10.0.0.1",
            ]
        )
        tokens = st.sampled_from(["", "Zm9yZ2VkLXRva2Vu", p.token(call_id="x@y")])

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(
            routes=routes,
            via=vias,
            token=tokens,
            hops=st.integers(0, 255),
            phone=st.booleans(),
            body=st.sampled_from([b"", SDP]),
            uri=st.sampled_from(
                ["", f"sip:127.0.0.1:{p.hop.port}", f"sip:al@127.0.0.1:{p.hop.port}"]
            ),
        )
        def check(
            routes: list[str], via: str, token: str, hops: int, phone: bool, body: bytes, uri: str
        ) -> None:
            ours = p.ours(token)
            data = ack(
                p,
                routes=[ours, *routes[1:]],
                via=via,
                max_forwards=f"Max-Forwards: {hops}",
                phone=phone,
                body=body,
                extra=["Content-Type: application/sdp"] if body else [],
                uri=uri,
            )
            p.compare(data)

        check()
        assert len(p.taken) >= 20  # not only declines
