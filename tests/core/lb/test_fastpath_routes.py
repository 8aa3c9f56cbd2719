"""In-dialog requests from a client with our Route, and the dialog-creating ones that
get it, through the LB's fast path (core/lb/fastpath.py) against the present path: the
harness of test_fastpath_requests.py (an LB worker composed in-process on loopback
sockets, each datagram handed to it once with the fast path and once without), with a
second proxy a Route can name.

Our Route is the Record-Route the LB itself put in an INVITE it relayed; the ACKs and
BYEs are written as sipp (every Route on one line) and phones (one per line) write them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfleet.sip import Request, parse_message
from sipfleet.sip.flow import FlowTokens
from sipfleet.storage import LbTarget
from sipfleet.transport.base import Peer
from tests.core.lb.messages import MULTIPART
from tests.core.lb.test_fastpath_requests import Lb, Socket, lb

CALL_ID = "1-4242@127.0.0.1"
FROM_TAG = "1SIPpTag001"
TO_TAG = "b2c9f0e1-7a"
DIALOG_TOKEN = "Zm9vYmFyLWRpYWxvZy10b2tlbg"  # a proxy's ;dt= (base64url)


@dataclass
class Dialog:
    made: Lb
    proxy2: Socket  # a second proxy in the pool, named by a Route
    ours: str  # our Record-Route from the INVITE, as <sip:TOKEN@host:port;lr>

    @property
    def bare(self) -> str:
        """Our Route without a flow token (the second of a pair, as on two sides)."""
        return f"<sip:127.0.0.1:{self.made.port};lr>"

    @property
    def proxy_route(self) -> str:
        return f"<sip:127.0.0.1:{self.proxy2.port};lr;dt={DIALOG_TOKEN}>"

    def with_token(self, token: str) -> str:
        return f"<sip:{token}@127.0.0.1:{self.made.port};lr>"

    @property
    def token(self) -> str:
        return self.ours[len("<sip:") : self.ours.index("@")]


def invite(
    phone: Socket,
    call_id: str = CALL_ID,
    from_tag: str = FROM_TAG,
    *,
    method: str = "INVITE",
    via: str = "",
    contact: str = "",
    extra: Sequence[str] = (),
    body: bytes = b"",
) -> bytes:
    """A dialog-creating request from the phone, as sipp's UAC writes its INVITE."""
    here = f"{phone.host}:{phone.port}"
    lines = [
        f"{method} sip:bob@127.0.0.1 SIP/2.0",
        via or f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1-1-0",
        f"From: sipp <sip:sipp@{here}>;tag={from_tag}",
        "To: <sip:bob@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        contact or f"Contact: <sip:sipp@{here}>",
        "Max-Forwards: 70",
        *extra,
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def record_route(made: Lb, call_id: str = CALL_ID, from_tag: str = FROM_TAG) -> str:
    """The Record-Route the LB puts in an INVITE from the phone (the present path)."""
    with made.present_path():
        made.endpoint.frame_received(invite(made.phone, call_id, from_tag), made.peer)
    [forwarded] = [data for got in made.targets() for data in got]
    message = parse_message(forwarded)
    assert isinstance(message, Request)
    [ours] = message.record_routes
    return str(ours)


@asynccontextmanager
async def dialog() -> AsyncIterator[Dialog]:
    async with lb() as made:
        proxy2 = Socket()
        made.more.append(proxy2)
        made.balancer.router.pools.update(
            [
                LbTarget(1, "proxy", f"sip:127.0.0.1:{made.proxy.port}", 1, "active"),
                LbTarget(2, "proxy", f"sip:127.0.0.1:{proxy2.port}", 1, "active"),
            ]
        )
        ours = record_route(made)
        try:
            yield Dialog(made, proxy2, ours)
        finally:
            proxy2.sock.close()


def in_dialog(
    phone: Socket,
    routes: Sequence[str],
    *,
    method: str = "BYE",
    from_line: str = "",
    to_line: str = "",
    call_id: str = CALL_ID,
    max_forwards: str = "Max-Forwards: 70",
    extra: Sequence[str] = (),
    routes_after_via: bool = True,
    body: bytes = b"",
) -> bytes:
    """An in-dialog request from the caller: sipp's order (Routes after the Via) or
    a phone's (Routes after Max-Forwards, a User-Agent)."""
    here = f"{phone.host}:{phone.port}"
    via = f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1-2-7"
    head = [via, *routes, max_forwards] if routes_after_via else [via, max_forwards, *routes]
    lines = [
        f"{method} sip:bob@127.0.0.1:5062 SIP/2.0",
        *head,
        from_line or f"From: sipp <sip:sipp@{here}>;tag={FROM_TAG}",
        to_line or f"To: <sip:bob@127.0.0.1>;tag={TO_TAG}",
        f"Call-ID: {call_id}",
        f"CSeq: 2 {method}",
        *extra,
        f"Content-Length: {len(body)}",
    ]
    return "\r\n".join(line for line in lines if line).encode("latin-1") + b"\r\n\r\n" + body


def forwarded_to(got: list[list[bytes]]) -> tuple[int, Request]:
    """Which target (0: the proxy, 1: the second) got the one datagram sent, and it."""
    [(at, data)] = [(at, data) for at, datagrams in enumerate(got) for data in datagrams]
    message = parse_message(data)
    assert isinstance(message, Request)
    return at, message


# -- what is forwarded -----------------------------------------------------------------------
async def test_sipps_bye_with_both_routes_on_one_line_goes_to_the_routed_proxy() -> None:
    async with dialog() as d:
        made = d.made
        data = in_dialog(made.phone, [f"Route: {d.ours}, {d.proxy_route}"])
        parse_message(data)  # its header names known, as a running LB knows them
        assert made.fast.relay(data, made.peer)
        at, message = forwarded_to(made.targets())
        assert at == 1  # the proxy the next Route names, whatever the Call-ID says
        assert message.header_lines("route") == [d.proxy_route]
        assert d.token not in message.serialize().decode("latin-1")
        assert message.max_forwards == 69
        assert (message.vias[0].host, message.vias[0].port) == ("127.0.0.1", made.port)
        assert made.fast.requests == 1
        assert made.counts()["method BYE"] == 1


async def test_the_same_bytes_as_the_present_path_for_each_usual_layout() -> None:
    async with dialog() as d:
        made, ours, bare, proxy = d.made, d.ours, d.bare, d.proxy_route
        layouts = [
            [f"Route: {ours}, {proxy}"],  # sipp
            [f"Route: {ours}", f"Route: {proxy}"],  # a phone, one per line
            [f"Route: {ours}"],  # only ours: the pool chooses by Call-ID
            [f"Route: {ours}, {bare}, {proxy}"],  # two of ours (two sides), one line
            [f"Route: {ours}", f"Route: {bare}", f"Route: {proxy}"],
            [f"Route: {ours}, {bare}", f"Route: {proxy}"],
            [f"Route: {ours},{proxy}"],
            [f"Route: {ours} ,  {proxy}  "],
            [f"Route: {ours}, <sip:198.51.100.9:5060;lr>"],  # not a pool target
            [f"Route: {ours}", "Route: <sip:198.51.100.9;lr>, <sip:198.51.100.10;lr>"],
            [f"route: {ours}, {proxy}"],  # Route found by its line, any spelling taken
        ]
        for routes in layouts:
            for method in ("ACK", "BYE", "INVITE", "UPDATE", "INFO"):
                for after_via in (True, False):
                    data = in_dialog(made.phone, routes, method=method, routes_after_via=after_via)
                    taken = made.compare(data)
                    assert taken == (routes[0][:6] == "Route:"), (routes, method)


async def test_a_phones_bye_with_a_user_agent_and_a_body() -> None:
    async with dialog() as d:
        made = d.made
        data = in_dialog(
            made.phone,
            [f"Route: {d.ours}", f"Route: {d.proxy_route}"],
            from_line=f'From: "Alice" <sip:alice@127.0.0.1>;tag={FROM_TAG}',
            to_line=f"To: <sip:bob@127.0.0.1>;tag={TO_TAG};x-extra=1",
            routes_after_via=False,
            extra=("User-Agent: baresip v3.10.1 (x86_64/linux)", "Content-Type: text/plain"),
            body=b"bye now\r\n",
        )
        assert made.compare(data)


async def test_a_request_of_the_callee_is_taken_too() -> None:
    """The callee's tags the other way round: the token is bound to the dialog either way."""
    async with dialog() as d:
        made = d.made
        data = in_dialog(
            made.phone,
            [f"Route: {d.ours}, {d.proxy_route}"],
            from_line=f"From: <sip:bob@127.0.0.1>;tag={TO_TAG}",
            to_line=f"To: sipp <sip:sipp@127.0.0.1>;tag={FROM_TAG}",
        )
        assert made.compare(data)


async def test_a_routed_proxy_that_is_down_gives_way_to_the_pool() -> None:
    async with dialog() as d:
        made = d.made
        target = made.balancer.router.pools.at("127.0.0.1", d.proxy2.port)
        assert target is not None
        target.health = "down"
        for method in ("ACK", "BYE"):
            data = in_dialog(made.phone, [f"Route: {d.ours}, {d.proxy_route}"], method=method)
            assert made.compare(data)


async def test_a_dialogs_next_request_read_again_is_sent_where_the_pools_say_now() -> None:
    """What the fast path remembers of a dialog's lines (its Routes as read, its tags)
    is text: the next Route's target is looked up for each request, the token checked."""
    async with dialog() as d:
        made = d.made
        pools = made.balancer.router.pools

        def proxy2(state: str) -> None:
            pools.update(
                [
                    LbTarget(1, "proxy", f"sip:127.0.0.1:{made.proxy.port}", 1, "active"),
                    LbTarget(2, "proxy", f"sip:127.0.0.1:{d.proxy2.port}", 1, state),
                ]
            )

        routes = [f"Route: {d.ours}, {d.proxy_route}"]
        ack = in_dialog(made.phone, routes, method="ACK")
        assert made.compare(ack)
        bye = in_dialog(made.phone, routes)
        proxy2("disabled")  # the routed proxy taken out after the ACK
        assert made.fast.relay(bye, made.peer)
        at, _ = forwarded_to(made.targets())
        assert at == 0  # the pool's proxy, not the one the Route names
        assert made.compare(bye)
        proxy2("active")
        assert made.fast.relay(bye, made.peer)
        at, _ = forwarded_to(made.targets())
        assert at == 1
        assert made.compare(bye)
        other = in_dialog(made.phone, routes, call_id="another@127.0.0.1")
        assert not made.compare(other)  # the token is bound to the first dialog: 403


# -- the initial request: a Record-Route added -------------------------------------------------
SDP = b"v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


async def test_a_whole_dialog_from_its_bytes() -> None:
    """sipp's INVITE gets our Record-Route on the fast path; its ACK and BYE come back
    with it and are taken too: each the same datagram as the present path sends."""
    async with dialog() as d:
        made = d.made
        extra = ("User-Agent: sipp-proxy-test", "Content-Type: application/sdp")
        data = invite(made.phone, "whole@127.0.0.1", "77uac1", extra=extra, body=SDP)
        parse_message(data)
        assert made.fast.relay(data, made.peer)
        _, forwarded = forwarded_to(made.targets())
        [ours] = forwarded.record_routes
        assert str(ours) == record_route(made, "whole@127.0.0.1", "77uac1")
        assert made.compare(data)
        proxy = f"<sip:127.0.0.1:{d.proxy2.port};lr;dt={DIALOG_TOKEN}>"
        here = f"{made.phone.host}:{made.phone.port}"
        for method in ("ACK", "BYE"):
            later = in_dialog(
                made.phone,
                [f"Route: {ours}, {proxy}"],
                method=method,
                call_id="whole@127.0.0.1",
                from_line=f"From: sipp <sip:sipp@{here}>;tag=77uac1",
            )
            assert made.compare(later)
        assert made.fast.requests == 4  # the INVITE twice (relay, compare), ACK, BYE


async def test_dialog_creating_requests_as_by_the_present_path_or_declined() -> None:
    async with dialog() as d:
        made, phone = d.made, d.made.phone
        nat = "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-4;rport"
        taken = [
            invite(phone),
            invite(phone, method="SUBSCRIBE", extra=("Event: presence",)),
            invite(phone, method="REFER", extra=("Refer-To: <sip:carol@127.0.0.1>",)),
            invite(phone, via=nat),  # behind NAT: the flow is reached by its address
            invite(phone, contact="Contact: <sip:sipp@192.168.1.20:5060;ob>"),
            invite(phone, contact="Contact: <sip:sipp@10.0.0.1:5060>;expires=60"),
            invite(phone, body=SDP, extra=("Content-Type: application/sdp",)),
        ]
        for data in taken:
            assert made.compare(data), data
        declined = [
            invite(phone, extra=("Record-Route: <sip:10.0.0.9;lr>",)),
            invite(phone, extra=('Proxy-Authorization: Digest username="alice"',)),
            invite(phone, contact="Contact: <sip:sipp@[bad>"),
            invite(phone, via="v: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-9"),
        ]
        for data in declined:
            assert not made.compare(data), data


# -- declined: the present path answers --------------------------------------------------------
async def test_refused_tokens_are_declined_and_answered_403_by_the_present_path() -> None:
    async with dialog() as d:
        made = d.made
        token = d.token
        forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        other_dialog = record_route(made, call_id="other@127.0.0.1")
        flow = made.balancer.router.tokens.decode(token, CALL_ID, (FROM_TAG, None))
        assert flow is not None
        other_secret = FlowTokens(b"another-cluster").encode(flow)
        for route in (d.with_token(forged), other_dialog, d.with_token(other_secret)):
            for method in ("BYE", "ACK"):
                data = in_dialog(made.phone, [f"Route: {route}, {d.proxy_route}"], method=method)
                before = made.balancer.refused_tokens
                assert not made.compare(data)
                made.endpoint.frame_received(data, made.peer)  # the fast path, declining
                assert made.targets() == [[], []]
                answers = made.phone.drain()
                if method == "ACK":
                    assert answers == []
                else:
                    [answer] = answers
                    assert answer.startswith(b"SIP/2.0 403 Invalid Flow Token\r\n")
                assert made.balancer.refused_tokens == before + 1


async def test_declined_from_the_cluster_without_tags_and_while_draining() -> None:
    async with dialog() as d:
        made = d.made
        routes = [f"Route: {d.ours}, {d.proxy_route}"]
        from_proxy = Peer("udp", "127.0.0.1", d.proxy2.port, "127.0.0.1", made.port)
        assert not made.fast.relay(in_dialog(made.phone, routes), from_proxy)
        no_to_tag = in_dialog(made.phone, routes, to_line="To: <sip:bob@127.0.0.1>")
        assert not made.compare(no_to_tag)
        no_from_tag = in_dialog(made.phone, routes, from_line="From: <sip:a@127.0.0.1>")
        assert not made.compare(no_from_tag)
        made.balancer.router.pools.update(
            [
                LbTarget(1, "proxy", f"sip:127.0.0.1:{made.proxy.port}", 1, "active"),
                LbTarget(2, "proxy", f"sip:127.0.0.1:{d.proxy2.port}", 1, "draining"),
            ]
        )
        assert not made.compare(in_dialog(made.phone, routes))


async def test_relayed_while_overloaded_as_by_the_present_path() -> None:
    """A request of a dialog under way is never refused for overload: relayed."""
    async with dialog() as d:
        d.made.balancer.overload.overloaded = True
        assert d.made.compare(in_dialog(d.made.phone, [f"Route: {d.ours}"]))
        assert d.made.balancer.shed == d.made.balancer.shed_dropped == 0


# -- hypothesis: variants ----------------------------------------------------------------------
def route_values(d: Dialog) -> list[str]:
    ours, port = d.ours, d.made.port
    return [
        ours,
        ours,
        d.bare,
        d.proxy_route,
        d.proxy_route,
        "<sip:198.51.100.9:5060;lr>",
        f"<sip:127.0.0.1:{d.proxy2.port};lr>",
        f"<sips:127.0.0.1:{port};lr>",
        f"<sip:127.0.0.1:{port};lr;transport=tcp>",
        f"<SIP:{d.token}@127.0.0.1:{port};lr>",
        f'"LB" {ours}',
        f"{ours};x=1",
        f"< {ours[1:]}",
        f"sip:127.0.0.1:{port};lr",
        "<sip:>",
        "<tel:+15550100>",
        "<sip:[::1]:5060;lr>",
        "<sip:bad host;lr>",
        f"<sip:{d.token}%41@127.0.0.1:{port};lr>",
        f"<sip:127.0.0.1:{port};lr;dt=a=b>",
        "",
    ]


@st.composite
def variants(draw: st.DrawFn, d: Dialog) -> bytes:
    values = route_values(d)
    chosen = draw(st.lists(st.sampled_from(values), min_size=1, max_size=4))
    if draw(st.integers(0, 3)):
        chosen[0] = d.ours  # mostly ours on top
    separator = draw(st.sampled_from([", ", ",", " , ", ",\t", ", ,"]))
    split = draw(st.integers(0, len(chosen)))  # values before it on the first line
    name = draw(st.sampled_from(["Route: ", "Route: ", "Route:", "ROUTE: ", "Route:  "]))
    lines = [name + separator.join(chosen[:split]), name + separator.join(chosen[split:])]
    routes = [line for line in lines if line.strip() != name.strip()]
    token_route = draw(st.sampled_from([None, None, "forged", "other"]))
    if token_route == "forged":
        routes = [line.replace(d.token, d.token[:-3] + "xyz") for line in routes]
    elif token_route == "other":
        routes = [line.replace(d.token, d.token[:-4] + d.token[-4:][::-1]) for line in routes]
    here = f"{d.made.phone.host}:{d.made.phone.port}"
    from_line = draw(
        st.sampled_from(
            [
                "",
                f'From: "Sipp, the UA" <sip:sipp@{here}>;tag={FROM_TAG}',
                f"From: <sip:sipp@{here}>;tag={FROM_TAG};x=y",
                f"From: <sip:sipp@{here}>;TAG={FROM_TAG}",
                f"From: <sip:sipp@{here}>;tag={FROM_TAG}, <sip:x@{here}>",
                f"From: <sip:sipp@{here}>; tag={FROM_TAG}",
                f"From: sip:sipp@{here};tag={FROM_TAG}",
                f"f: <sip:sipp@{here}>;tag={FROM_TAG}",
                f"From: <sip:sipp@{here}>;tag={FROM_TAG}_x",
                f"From: <sip:sipp@{here};tag=inside>;tag={FROM_TAG}",
                f"From: <sip:sipp@{here}>;tag={FROM_TAG};tag",
                f"From: <sip:sipp@{here}>;tag=",
                f"From: bad display <sip:sipp@{here}>;tag={FROM_TAG}",
                f"From: b@d <sip:sipp@{here}>;tag={FROM_TAG}",
            ]
        )
    )
    to_line = draw(
        st.sampled_from(
            [
                "",
                "",
                f"To: <sip:bob@127.0.0.1>;tag={TO_TAG}",
                "To: <sip:bob@127.0.0.1>",
                f"To: Bob <sip:bob@127.0.0.1>;tag={TO_TAG}",
                f"To: <sip:bob@127.0.0.1>;tag={TO_TAG}\r\nTo: <sip:x@127.0.0.1>;tag=2",
                f"t: <sip:bob@127.0.0.1>;tag={TO_TAG}",
                f"To: <sip:bob@127.0.0.1>;tag={TO_TAG}.9-Z",
            ]
        )
    )
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    "User-Agent: baresip v3.10.1 (x86_64/linux)",
                    "User-Agent: friendly-scanner",
                    'Authorization: Digest username="alice", realm="x"',
                    "Contact: <sip:sipp@127.0.0.1:5062>",
                    "Call-ID: second@127.0.0.1",
                    "Subject: folded\r\n line",
                    "X-Custom: 1",
                ]
            ),
            max_size=2,
        )
    )
    return in_dialog(
        d.made.phone,
        routes,
        method=draw(st.sampled_from(["ACK", "BYE", "BYE", "INVITE", "NOTIFY", "REGISTER"])),
        from_line=from_line,
        to_line=to_line,
        call_id=draw(st.sampled_from([CALL_ID] * 4 + ["other@127.0.0.1", "1 4242"])),
        max_forwards=draw(
            st.sampled_from(["Max-Forwards: 70"] * 3 + ["Max-Forwards: 0", "Max-Forwards: 1", ""])
        ),
        extra=extra,
        routes_after_via=draw(st.booleans()),
        body=draw(st.sampled_from([b"", b"", b"v=0\r\n", MULTIPART])),
    )


async def test_variants_are_forwarded_as_by_the_present_path_or_declined() -> None:
    async with dialog() as d:

        @settings(
            max_examples=1500,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=variants(d))
        def check(data: bytes) -> None:
            d.made.compare(data)

        check()
        assert len(d.made.taken) >= 20  # not only declines


# -- hypothesis: dialog-creating variants -------------------------------------------------------
@st.composite
def created_variants(draw: st.DrawFn, made: Lb) -> bytes:
    """An INVITE (SUBSCRIBE, REFER) from the phone with the lines the lean reading of
    ``_created`` reads varied: the top Via's address, the Contact lines, From, To, a
    Record-Route, the Request-URI's scheme, the Call-ID."""
    phone = made.phone
    here = f"{phone.host}:{phone.port}"
    via = draw(
        st.sampled_from(
            [
                "",
                "",
                f"Via: SIP/2.0/UDP {phone.host};branch=z9hG4bK-1-1-0",  # no port: 5060
                "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-4;rport",
                f"Via: SIP/2.0/UDP {phone.host}:{phone.port + 1};branch=z9hG4bK-5",
                f"Via: SIP/2.0/UDP {here} ;branch=z9hG4bK-6",
                f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-7;received=10.0.0.1",
                f"Via: SIP/2.0/TCP {here};branch=z9hG4bK-8",
                "Via: SIP/2.0/UDP [::1]:5060;branch=z9hG4bK-9",
                "Via: SIP/2.0/UDP phone.example.com:5060;branch=z9hG4bK-10",
                "Via: SIP/2.0/UDP bad host:5060;branch=z9hG4bK-11",
                f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-12;bad param",
            ]
        )
    )
    contact_values = [
        f"<sip:sipp@{here}>",
        "<sip:sipp@192.168.1.20:5060>",
        "<sip:sipp@10.0.0.1:5060;ob>",
        '<sip:sipp@10.0.0.1>;reg-id=1;+sip.instance="<urn:uuid:1>"',
        "<sip:sipp@10.0.0.1>;reg-id=1",
        f"sip:sipp@{here}",
        f'"Sipp" <sip:sipp@{here}>;expires=60',
        "<tel:+15550100>",
        "<sip:sipp@[fd00::1]:5060>",
        "<sip:sipp@[bad>",
        "<sip:>",
        "*",
        f"<sip:sipp@{here}>, <sip:sipp@192.168.1.20>",
    ]
    contacts = draw(st.lists(st.sampled_from(contact_values), max_size=2))
    from_line = draw(
        st.sampled_from(
            [
                f"From: sipp <sip:sipp@{here}>;tag={FROM_TAG}",
                f"From: sipp <sip:sipp@{here}>;tag={FROM_TAG}",
                f"From: <sip:sipp@{here}>",
                f"From: <sip:sipp@{here}>;tag=",
                f"From: <sip:sipp@{here}>;tag={FROM_TAG}, <sip:x@{here}>",
                f'From: "A, B" <sip:sipp@{here}>;tag={FROM_TAG}',
                f"From: sip:sipp@{here};tag={FROM_TAG}",
                f"From: <sip:sipp@{here}>;tag={FROM_TAG}\r\nFrom: <sip:x@{here}>;tag=2",
            ]
        )
    )
    to_line = draw(
        st.sampled_from(
            [
                "To: <sip:bob@127.0.0.1>",
                "To: <sip:bob@127.0.0.1>",
                f"To: <sip:bob@127.0.0.1>;tag={TO_TAG}",
                "To: Bob <sip:bob@127.0.0.1>;x=1",
                "To: sip:bob@127.0.0.1",
                '"Bob, B" <sip:bob@127.0.0.1>',
                "To: <sip:bob@127.0.0.1",
                "To: <sip:bob@127.0.0.1>;TAG=x",
                "To: <sip:bob@127.0.0.1>\r\nTo: <sip:carol@127.0.0.1>",
                "To: ",
            ]
        )
    )
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    "User-Agent: baresip v3.10.1 (x86_64/linux)",
                    "Record-Route: <sip:10.0.0.9;lr>",
                    "record-route: <sip:10.0.0.9;lr>",
                    "Supported: outbound",
                    "X-Custom: 1",
                ]
            ),
            max_size=2,
        )
    )
    method = draw(st.sampled_from(["INVITE", "INVITE", "SUBSCRIBE", "REFER"]))
    uri = draw(st.sampled_from(["sip:bob@127.0.0.1", "sips:bob@127.0.0.1", "SIPS:bob@x"]))
    lines = [
        f"{method} {uri} SIP/2.0",
        via or f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1-1-0",
        from_line,
        to_line,
        f"Call-ID: {draw(st.sampled_from([CALL_ID, 'c2@127.0.0.1', '1 4242']))}",
        f"CSeq: 1 {method}",
        *[f"Contact: {value}" for value in contacts],
        "Max-Forwards: 70",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def test_created_variants_are_forwarded_as_by_the_present_path_or_declined() -> None:
    async with lb() as made:

        @settings(
            max_examples=1500,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=created_variants(made))
        def check(data: bytes) -> None:
            made.compare(data)

        check()
        assert len(made.taken) >= 50  # not only declines
        taken = [parse_message(data) for data in made.taken]
        assert {message.method for message in taken} == {"INVITE", "SUBSCRIBE", "REFER"}
        # taken with each kind of evidence (the flow token, compared, says which)
        for evidence in (b"@192.168.1.20:5060>\r\n", b";ob>", b"192.168.1.20:5060;branch"):
            assert any(evidence in data for data in made.taken), evidence
        assert any(b"sips:" in data for data in made.taken)
