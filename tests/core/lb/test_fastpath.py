"""The LB's fast path (core/lb/fastpath.py) against the present path: for every datagram
it takes, the same bytes to the same destination, counted the same way; the rest it
declines. Sends are recorded, not made (no packet leaves for the addresses in the corpus)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfleet.config.listen import parse_listen
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.lb.balancer import LEARN_MARK, OUR_BRANCHES
from sipfleet.core.lb.edge import AUTH_MARK
from sipfleet.core.lb.fastpath import FastRelay
from sipfleet.core.stateless import StatelessForwarder, StatelessRelay
from sipfleet.sip import ParseError, parse_message
from sipfleet.transport.base import Destination, Peer
from tests.core.lb.messages import MULTIPART

MARKS = (OUR_BRANCHES, AUTH_MARK, LEARN_MARK)
PROXY = Peer("udp", "127.0.0.1", 5080, "127.0.0.1", 0)


class RecordingEndpoint(SipEndpoint):
    """Sends go to a list (the corpus names addresses off this host)."""

    def __init__(self, listen: Sequence[str]) -> None:
        super().__init__([parse_listen(text) for text in listen])
        self.sent: list[tuple[bytes, Destination]] = []

    def send_bytes(self, data: bytes, destination: Destination) -> None:
        self.sent.append((data, destination))
        self.stats.messages_sent += 1


@dataclass
class Paths:
    endpoint: RecordingEndpoint
    forwarder: StatelessForwarder
    fast: FastRelay
    taken: list[bytes] = field(default_factory=list)

    @property
    def our_via(self) -> str:
        address = self.endpoint.addresses[0]
        return f"SIP/2.0/UDP {address.host}:{address.port}"

    def counts(self) -> dict[str, Any]:
        endpoint = self.endpoint
        return {
            **self.forwarder.counters(),
            **endpoint.counters(),
            "received": list(endpoint.responses_received_by_class),
        }

    def compare(self, data: bytes, peer: Peer = PROXY) -> bool:
        """Run ``data`` through the fast path, then the present one; when the fast path
        took it, both sent the same and counted the same. Returns whether it was taken.
        The header names are made known first, as a running LB knows its peers'."""
        with contextlib.suppress(ParseError):
            parse_message(data)
        before = self.counts()
        taken = self.fast.relay(data, peer)
        fast_sent = self._sent()
        fast_counts = _delta(before, self.counts())
        if not taken:
            assert fast_sent == []
            assert fast_counts == {}
            return False
        before = self.counts()
        self.endpoint.frame_received(data, peer)
        assert self._sent() == fast_sent
        assert _delta(before, self.counts()) == fast_counts
        self.taken.append(data)
        return True

    def _sent(self) -> list[tuple[bytes, Destination]]:
        sent = list(self.endpoint.sent)
        self.endpoint.sent.clear()
        return sent


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed: a counter's increase, a list's increase at each index."""
    changed: dict[str, Any] = {}
    for name, value in after.items():
        if value != before[name]:
            was = before[name]
            changed[name] = (
                [a - b for a, b in zip(value, was, strict=True)]
                if isinstance(value, list)
                else value - was
            )
    return changed


@asynccontextmanager
async def paths(udp_sockets: int = 2) -> AsyncIterator[Paths]:
    """An endpoint on ``udp_sockets`` UDP sockets (two: our Via carries ``sfi``), with
    the present path (the stateless relay: Balancer.on_response for a Via without
    marks) as its handler and the fast path beside it."""
    endpoint = RecordingEndpoint(["udp:127.0.0.1:0"] * udp_sockets)
    forwarder = StatelessForwarder(endpoint, force_rport=True)
    endpoint.handler = StatelessRelay(forwarder, Destination("udp", "127.0.0.1", 5080))
    async with endpoint:
        yield Paths(
            endpoint, forwarder, FastRelay(endpoint, forwarder, MARKS, learn_mark=LEARN_MARK)
        )


def response(
    vias: Sequence[str],
    *,
    start: str = "SIP/2.0 200 OK",
    via_lines: Sequence[str] | None = None,
    before: Sequence[str] = (),
    after: Sequence[str] = ("Content-Length: 0",),
    body: bytes = b"",
    line_end: str = "\r\n",
) -> bytes:
    """A response: ``vias`` one a line (or ``via_lines`` as written), then From, To,
    Call-ID, CSeq, Contact and ``after``."""
    lines = [
        start,
        *before,
        *(via_lines if via_lines is not None else [f"Via: {via}" for via in vias]),
        "From: <sip:sipp@127.0.0.1:5062>;tag=1SIPpTag001",
        "To: <sip:echo@127.0.0.1:5060>;tag=2SIPpTag011",
        "Call-ID: 1-4242@127.0.0.1",
        "CSeq: 1 OPTIONS",
        "Contact: <sip:echo@127.0.0.1:5080>",
        *after,
    ]
    return (line_end.join(lines) + line_end + line_end).encode("latin-1") + body


CLIENT = "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1-1-0;received=127.0.0.2;rport=5099"


async def test_a_sipp_answer_is_relayed_from_its_bytes() -> None:
    async with paths() as made:
        ours = f"{made.our_via};branch=z9hG4bK-lsb.x.y;sfi=u1"
        vias_on_one_line = [f"Via: {ours}, {CLIENT}"]  # as sipp's [last_Via:] writes them
        assert made.compare(response([ours, CLIENT]))
        assert made.compare(response([], via_lines=vias_on_one_line))
        assert made.fast.responses == 2
        assert made.forwarder.stats.responses_forwarded == 4  # each path relayed both


async def test_what_the_fast_path_sends() -> None:
    async with paths() as made:
        ours = f"{made.our_via};branch=z9hG4bK-lsb.x.y;sfi=u1"
        assert made.fast.relay(response([ours, CLIENT]), PROXY)
        [(data, destination)] = made.endpoint.sent
        assert data == response([CLIENT])
        assert destination == Destination(
            "udp", "127.0.0.2", 5099, None, made.endpoint.udp.addresses[1]
        )
        assert made.endpoint.responses_received_by_class[2] == 1
        assert made.forwarder.stats.responses_forwarded == 1


# -- the corpus ------------------------------------------------------------------------------
CLIENT_VIAS = (
    CLIENT,
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-2;rport",
    "SIP/2.0/UDP 127.0.0.1:5062;rport=5099;branch=z9hG4bK-3",
    "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-4",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-5;received=127.0.0.9",
    "SIP/2.0/UDP client.example.com:5062;branch=z9hG4bK-6",  # a name: unroutable
    "SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bK-7",
    "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-8",
    "SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK-9;received=127.0.0.3;rport=50123",
    "SIP/2.0/UDP [::1]:5062;branch=z9hG4bK-10",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-11;received=::1",
    "sip/2.0/udp 127.0.0.1:5062;branch=z9hG4bK-12",
    "SIP/2.0/UDP  127.0.0.1 : 5062 ;branch=z9hG4bK-13",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-14;rport=99999",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=",
    'SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-16;x="a,b"',
    "SIP/2.0/SCTP 127.0.0.1:5062;branch=z9hG4bK-17",
    "garbage",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-19;rport=5099;received=127.0.0.4",
    # CLIENT's parameters after branch values the Via parser reads another way (the
    # fast path memoises destinations by the Vias without their branch values)
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1?1;received=127.0.0.2;rport=5099",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1 1;received=127.0.0.2;rport=5099",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=;received=127.0.0.2;rport=5099",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=a=b;received=127.0.0.2;rport=5099",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-\xe9;received=127.0.0.2;rport=5099",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK_1!;received=127.0.0.2;rport=5099",
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-20;received=127.0.0.2;rport=5099;branch=",
)
OUR_PARAMS = (
    ";branch=z9hG4bK-lsb.a.b",
    ";branch=z9hG4bK-lsb.a.b;sfi=u0",
    ";branch=z9hG4bK-lsb.a.b;sfi=u1",
    ";branch=z9hG4bK-lsb.a.b;sfi=u7",
    ";branch=z9hG4bK-lsb.a.b;sfi=t4294967297",
    ";branch=z9hG4bK-lsb.a.b;sfi=u1;sfi=u0",
    ";branch=z9hG4bK-lb-probe-1",
    ";branch=z9hG4bK-lsb.a.b;lba=YWxpY2UAMTI3LjAuMC4x",
    ";branch=z9hG4bK-lsb.a.b;lbf=abc;lbc=def",
    ";branch=z9hG4bK-lsb.a.b;lbf=abc;lbc=def;oc",
    ";branch=z9hG4bK-lsb.a.b;lbf=abc;lbc=def;oc=20;oc-validity=500",
    ";branch=z9hG4bK-lsb.a?b;sfi=u1",
    ";branch=;sfi=u1",
    ";branch=z9hG4bK-lsb.a.b;sfi=x1",
    ";branch=z9hG4bK-lsb.a=b;sfi=u1",
    ";branch=z9hG4bK-lsb.a.b;sfi=u0;x=1",
    ";branch=z9hG4bK-lsb.a.b;SFI=u1",
    ";branch=z9hG4bK-lb-x.y;sfi=u1",
    ";branch=xbranch=z9hG4bK-lb;sfi=u1",
    ";Branch=z9hG4bK-lsb.a.b;sfi=u1",
    ";branch=z9hG4bK-lsb.a.b;sfi=u01",
    ";branch=z9hG4bK-lsb.a.b;sfi=u0;lbf=abc;lbc=def",
    ";branch=z9hG4bK-lsb.a.b;sfi=u1;lba=YWxpY2UAMTI3LjAuMC4x",
)


@st.composite
def responses(draw: st.DrawFn, our_via: str) -> bytes:
    ours = draw(
        st.sampled_from([our_via, our_via.replace("UDP", "TCP"), "SIP/2.0/UDP 10.1.1.1:5060"])
    )
    ours += draw(st.sampled_from(OUR_PARAMS))
    client = draw(st.sampled_from(CLIENT_VIAS))
    more = draw(st.lists(st.sampled_from(CLIENT_VIAS), max_size=2))
    name = draw(st.sampled_from(["Via", "Via", "v", "VIA", "Via ", "via"]))
    spacing = draw(st.sampled_from([" ", " ", "", "  ", "\t"]))
    joined = draw(st.sampled_from(["lines", "one line", "two lines", "comma first"]))
    if joined == "lines":
        via_lines = [f"{name}:{spacing}{via}" for via in (ours, client, *more)]
    elif joined == "one line":
        via_lines = [f"{name}:{spacing}" + ", ".join((ours, client, *more))]
    elif joined == "two lines":
        via_lines = [f"{name}:{spacing}{ours}", "Via: " + " ,".join((client, *more))]
    else:
        via_lines = [f"{name}:{spacing}, {ours},, {client}", *[f"Via: {via}" for via in more]]
    before = draw(st.sampled_from([(), (), ("From: <sip:x@y>;tag=1",), ("X-Odd: 1",)]))
    # the last two hold a blank line (a multipart body's), past which the head is cut
    # (headlines.head_end_of): such a response must go the parsed way
    body = draw(st.sampled_from([b"", b"", b"v=0\r\n", b"\x00\xff body", MULTIPART, b"\r\n\r\n"]))
    length = draw(
        st.sampled_from(
            [
                f"Content-Length: {len(body)}",
                f"Content-Length: {len(body)}",
                f"l: {len(body)}",
                f"content-length:{len(body)}",
                f"Content-Length: {len(body) + 3}",
                f"Content-Length: {max(len(body) - 1, 0)}",
                "Content-Length: x",
                f"Content-Length: 0{len(body)}",
                "",
                f"Content-Length: {len(body)}\r\nContent-Length: {len(body)}",
            ]
        )
    )
    odd = draw(
        st.sampled_from(
            [
                "",
                "",
                "X-Custom-Header: one",
                "Bad Name: x",
                "Subject: folded\r\n more",
                "User-Agent: nul\x00here",
                "Warning: stray\rCR",
                "Supported: a\nb",
                "NoColonHere",
            ]
        )
    )
    start = draw(
        st.sampled_from(
            [
                "SIP/2.0 200 OK",
                "SIP/2.0 180 Ringing",
                "SIP/2.0 486 Busy Here",
                "SIP/2.0 699 Whatever",
                "SIP/2.0 099 Low",
                "SIP/2.0 700 High",
                "SIP/2.0 200",
                "SIP/2.0 20x OK",
                "sip/2.0 200 OK",
                "SIP/2.0  200 OK",
            ]
        )
    )
    line_end = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    after = [line for line in (odd, length) if line]
    data = response([], start=start, via_lines=via_lines, before=before, after=after, body=body)
    if line_end != "\r\n":
        data = data.replace(b"\r\n", line_end.encode())
    return draw(st.sampled_from([data, data, b"\r\n" + data, data + b"trailing"]))


async def test_the_fast_path_sends_what_the_present_path_sends_or_declines() -> None:
    async with paths() as made:

        @settings(
            max_examples=3000,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=responses(made.our_via))
        def check(data: bytes) -> None:
            made.compare(data)

        check()
        assert len(made.taken) >= 5  # not only declines (most draws have something odd)


# What a branch value may hold, for the checks read a character code at a time
# (headlines.alnum_dash_dot): letters, digits, '-' and '.', and what is not plain.
BRANCH_CHARACTERS = "aZz09-.-._!~%=?\xe9\xaa\xb2 \t"


async def test_any_branch_values_are_sent_as_the_present_path_sends_them() -> None:
    async with paths() as made:

        @settings(max_examples=1500, deadline=None)
        @given(
            client_branch=st.text(BRANCH_CHARACTERS, max_size=12),
            our_branch=st.text(BRANCH_CHARACTERS, max_size=12),
            joined=st.booleans(),
        )
        def check(client_branch: str, our_branch: str, joined: bool) -> None:
            ours = f"{made.our_via};branch=z9hG4bK{our_branch};sfi=u1"
            client = f"SIP/2.0/UDP 127.0.0.1:5062;branch={client_branch};rport=5099"
            lines = [f"Via: {ours}, {client}"] if joined else None
            made.compare(response([ours, client], via_lines=lines))

        check()
        assert len(made.taken) >= 5


@pytest.mark.parametrize("sockets", [1, 2])
async def test_taken_with_one_or_two_udp_sockets(sockets: int) -> None:
    async with paths(sockets) as made:
        ours = f"{made.our_via};branch=z9hG4bK-lsb.a.b"
        assert made.compare(response([ours + (";sfi=u0" if sockets == 2 else ""), CLIENT]))


async def test_declined_for_what_the_balancer_reads() -> None:
    async with paths() as made:
        for mark in (
            ";branch=z9hG4bK-lb-probe-1",
            ";branch=z9hG4bK-x;lba=YQ",
            ";branch=z9hG4bK-x;lbf=t",
        ):
            assert not made.fast.relay(response([made.our_via + mark, CLIENT]), PROXY)
        assert made.endpoint.sent == []


async def test_a_registrars_401_is_taken_but_not_a_2xx_nor_a_loss_with_none_to_hear_it() -> None:
    """The flow mark is read from a REGISTER's 2xx only (what it teaches the keepalive
    table); a registrar's overload control (RFC 7339) from any answer, here by nobody
    (no Balancer: test_fastpath_registers.py has one)."""
    async with paths() as made:
        flow = f"{made.our_via};branch=z9hG4bK-lsb.a.b;lbf=t;lbc=d;oc"
        assert made.compare(response([flow, CLIENT], start="SIP/2.0 401 Unauthorized"))
        for declined in (
            response([flow, CLIENT]),
            response([flow + "=20", CLIENT], start="SIP/2.0 401 Unauthorized"),
        ):
            assert not made.fast.relay(declined, PROXY)


async def test_a_datagram_too_large_is_left_to_the_parser() -> None:
    async with paths() as made:
        ours = f"{made.our_via};branch=z9hG4bK-lsb.a.b;sfi=u0"
        padding = "X-Pad: " + "p" * made.endpoint.limits.max_message_size
        assert not made.compare(response([ours, CLIENT], after=(padding, "Content-Length: 0")))
