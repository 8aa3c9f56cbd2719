"""The LB's fast path for requests (core/lb/fastpath.py) against the present path: an LB
worker composed in-process (roles/lb.compose) on loopback sockets, each datagram handed
to its endpoint twice, once with the fast path and once without. Loopback delivers a
datagram before ``sendto`` returns, so what the proxy and the client got is read at once."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfleet.config import config_from_dict
from sipfleet.config.listen import parse_listen
from sipfleet.core.lb.balancer import Balancer
from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.core.lb.fastpath import FastRelay
from sipfleet.roles.lb import WorkerSockets, compose, sides_of
from sipfleet.sip import ParseError, parse_message
from sipfleet.storage import LbTarget, Storage
from sipfleet.transport.base import Peer
from sipfleet.transport.sockets import bind_all
from tests.core.lb.messages import MULTIPART


class Socket:
    """A UDP socket on loopback, read without waiting."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]

    def drain(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(70000))
            except BlockingIOError:
                return got


@dataclass
class Lb:
    balancer: Balancer
    endpoint: LbEndpoint
    fast: FastRelay
    port: int
    proxy: Socket
    phone: Socket
    taken: list[bytes] = field(default_factory=list)
    more: list[Socket] = field(default_factory=list)  # pool targets added by a test

    @property
    def peer(self) -> Peer:
        return Peer("udp", self.phone.host, self.phone.port, "127.0.0.1", self.port)

    def counts(self) -> dict[str, Any]:
        return {
            **self.balancer.counters(),
            **{f"method {name}": n for name, n in self.endpoint.requests_by_method.items()},
            "sent by class": list(self.endpoint.responses_sent_by_class),
        }

    def compare(self, data: bytes) -> bool:
        """``data`` from the phone through the fast path, then the present one: when the
        fast path took it, the proxy and the phone got the same from both, counted the
        same. The header names are made known first, as a running LB knows them."""
        with contextlib.suppress(ParseError):
            parse_message(data)
        before = self.counts()
        taken = self.fast.relay(data, self.peer)
        fast = (self.targets(), self.phone.drain(), _delta(before, self.counts()))
        if not taken:
            assert fast == ([[] for _ in fast[0]], [], {})
            return False
        before = self.counts()
        with self.present_path():
            self.endpoint.frame_received(data, self.peer)
        present = (self.targets(), self.phone.drain(), _delta(before, self.counts()))
        assert fast[0] == present[0]
        assert fast[1] == present[1]
        fast_counts = {k: v for k, v in fast[2].items() if k != "fast"}
        assert fast_counts == present[2]
        self.taken.append(data)
        return True

    def targets(self) -> list[list[bytes]]:
        """What the proxy and each other pool target got."""
        return [target.drain() for target in (self.proxy, *self.more)]

    @contextlib.contextmanager
    def present_path(self) -> Iterator[None]:
        self.endpoint.fast = None
        try:
            yield
        finally:
            self.endpoint.fast = self.fast


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for name, value in after.items():
        was = before[name]
        if value != was:
            changed[name] = (
                [a - b for a, b in zip(value, was, strict=True)]
                if isinstance(value, list)
                else value - was
            )
    return changed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def lb(**edge: object) -> AsyncIterator[Lb]:
    """An LB worker on 127.0.0.1 (a fixed port: our Via names it) with one proxy."""
    proxy, phone = Socket(), Socket()
    port = _free_port()
    config = config_from_dict(
        {
            "node": {"cluster_secret": "fast-path-test"},
            "lb": {"listen": [f"udp:127.0.0.1:{port}"], "keepalive": False},
            "edge": {"rate_per_s": 0, **edge},
        }
    )
    sockets = bind_all(sides_of(config).listen)
    control = bind_all([parse_listen("udp:127.0.0.1:0")])[0]
    own = WorkerSockets(0, [*sockets, control], {0: control.getsockname()[:2]})
    worker = compose(config, cast(Storage, None), own, 1)
    worker.pools.update([LbTarget(1, "proxy", f"sip:127.0.0.1:{proxy.port}", 1, "active")])
    async with worker.endpoint:
        balancer = worker.endpoint.handler
        assert isinstance(balancer, Balancer)
        fast = worker.endpoint.fast
        assert fast is not None
        yield Lb(balancer, worker.endpoint, fast, port, proxy, phone)
    proxy.sock.close()
    phone.sock.close()


def request(
    phone: Socket,
    *,
    start: str = "OPTIONS sip:echo@127.0.0.1 SIP/2.0",
    via: str = "",
    max_forwards: str = "Max-Forwards: 70",
    extra: tuple[str, ...] = (),
    body: bytes = b"",
    length: str | None = None,
) -> bytes:
    """sipp's OPTIONS (bench/sipp/echo_uac.xml) by default."""
    lines = [
        start,
        via or f"Via: SIP/2.0/UDP {phone.host}:{phone.port};branch=z9hG4bK-1-1-0",
        *([max_forwards] if max_forwards else []),
        f"From: <sip:sipp@{phone.host}:{phone.port}>;tag=1SIPpTag001",
        "To: <sip:echo@127.0.0.1>",
        "Call-ID: 1-4242@127.0.0.1",
        "CSeq: 1 OPTIONS",
        *extra,
        length if length is not None else f"Content-Length: {len(body)}",
    ]
    return "\r\n".join(line for line in lines if line).encode("latin-1") + b"\r\n\r\n" + body


async def test_sipps_options_is_forwarded_from_its_bytes() -> None:
    async with lb() as made:
        assert made.compare(request(made.phone))
        assert made.fast.requests == 1
        assert made.balancer.forwarder.stats.requests_forwarded == 2  # each path once


async def test_what_the_fast_path_forwards() -> None:
    async with lb() as made:
        phone = made.phone
        assert made.fast.relay(request(phone), made.peer)
        [forwarded] = made.proxy.drain()
        message = parse_message(forwarded)
        ours, theirs = message.vias
        assert (ours.host, ours.port) == ("127.0.0.1", made.port)
        assert ours.branch is not None
        assert ours.branch.endswith(".-1-1-0")  # the phone's branch, carried
        assert theirs.received == phone.host
        assert theirs.rport == phone.port  # force_rport, the default
        assert message.max_forwards == 69


# -- the corpus -------------------------------------------------------------------------------
def vias(phone: Socket) -> list[str]:
    here = f"{phone.host}:{phone.port}"
    return [
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1-1-0",
        f"Via: SIP/2.0/UDP {here};rport;branch=z9hG4bK8c1d2e3f",  # baresip
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-2;rport=5099",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-3;received=10.0.0.1",
        "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-4;rport",  # behind NAT
        "Via: SIP/2.0/UDP phone.example.com;branch=z9hG4bK-5",
        f"Via: SIP/2.0/TCP {here};branch=z9hG4bK-6",
        "Via: SIP/2.0/UDP [::1]:5062;branch=z9hG4bK-7",
        f"v: SIP/2.0/UDP {here};branch=z9hG4bK-8",
        f"VIA: SIP/2.0/UDP {here};branch=z9hG4bK-9",
        f"Via:  SIP/2.0/UDP {here};branch=z9hG4bK-10",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-11, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-x",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-12\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKy",
        f"Via: sip/2.0/udp {here};branch=z9hG4bK-13",
        f"Via: SIP/2.0/UDP {here};branch=abc-2543",  # RFC 2543: hashed
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK" + "x" * 70,  # long: hashed
        f"Via: SIP/2.0/UDP {here};branch=",
        f'Via: SIP/2.0/UDP {here};branch=z9hG4bK-14;x="q"',
        f"Via: SIP/2.0/UDP {here}:05060;branch=z9hG4bK-15",
        f"Via: SIP/2.0/UDP {here};BRANCH=z9hG4bK-16;RPORT",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-17\r\n folded",
        "Via: garbage",
        # the first Vias' parameters after branch values read another way (the fast path
        # memoises what goes around a branch value by the Via without it)
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1?0",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-a=b",
        f"Via: SIP/2.0/UDP {here};branch=Z9HG4BK-1-1-0",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-1-1-0-" + "y" * 60,
        f"Via: SIP/2.0/UDP {here};rport;branch=z9hG4bK8c1d2e3f;branch=z9hG4bK-other",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-18;branch=z9hG4bK-18",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-19;branch=z9hG4bK-18",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK_x!;rport",
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-\xe9;rport",
    ]


@st.composite
def requests(draw: st.DrawFn, phone: Socket) -> bytes:
    method = draw(
        st.sampled_from(
            [
                *("OPTIONS", "OPTIONS", "BYE", "ACK", "CANCEL", "MESSAGE", "NOTIFY", "INFO"),
                *("REGISTER", "INVITE", "SUBSCRIBE", "FOO"),
            ]
        )
    )
    uri = draw(st.sampled_from(["sip:echo@127.0.0.1", "sip:bob@example.com", "sip:127.0.0.1"]))
    start = draw(
        st.sampled_from(
            [f"{method} {uri} SIP/2.0"] * 4
            + [f"{method}  {uri} SIP/2.0", f"{method} {uri} SIP/2.1"]
        )
    )
    via = draw(st.sampled_from(vias(phone)))
    via_first = draw(st.booleans())
    max_forwards = draw(
        st.sampled_from(
            ["Max-Forwards: 70"] * 3
            + ["Max-Forwards: 1", "Max-Forwards: 0", "Max-Forwards:  69", "max-forwards: 007"]
            + ["Max-Forwards: 256", "Max-Forwards: x", "", "Max-Forwards: 70\r\nMax-Forwards: 9"]
        )
    )
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    "User-Agent: baresip v3.10.1 (x86_64/linux)",
                    "User-Agent: friendly-scanner",
                    "Route: <sip:127.0.0.1;lr>",
                    'Authorization: Digest username="alice", realm="x"',
                    "Contact: <sip:alice@127.0.0.1:5062>",
                    "Call-ID: second@127.0.0.1",
                    "X-Custom: 1",
                    "Bad Name: x",
                    "Subject: folded\r\n line",
                    "Accept: application/sdp",
                    "Warning: nul\x00",
                ]
            ),
            max_size=3,
        )
    )
    # the last two hold a blank line, as a multipart body does: the head is cut at the
    # last one (headlines.head_end_of), and such a message must go the parsed way
    body = draw(st.sampled_from([b"", b"", b"hello\r\n", MULTIPART, b"\r\n\r\n"]))
    length = draw(
        st.sampled_from(
            [
                *(None, None, f"l: {len(body)}", f"Content-Length: {len(body) + 1}", ""),
                "Content-Length: 0\r\nContent-Length: 0",
            ]
        )
    )
    lines = [via, max_forwards] if via_first else [max_forwards, via]
    data = request(
        phone,
        start=start,
        via=lines[0] or lines[1],
        max_forwards=lines[1] if lines[0] else "",
        extra=tuple(extra),
        body=body,
        length=length,
    )
    if draw(st.integers(0, 9)) == 0:
        data = data.replace(b"\r\n", b"\n")
    if draw(st.integers(0, 9)) == 0:
        data = data.replace(b"Call-ID: 1-4242@127.0.0.1", b"Call-ID: 1 4242")
    return data


async def test_the_fast_path_forwards_what_the_present_path_forwards_or_declines() -> None:
    async with lb() as made:

        @settings(
            max_examples=2000,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=requests(made.phone))
        def check(data: bytes) -> None:
            made.compare(data)

        check()
        assert len(made.taken) >= 5  # not only declines (most draws have something odd)


# What a branch value may hold, for the checks read a character code at a time
# (headlines.alnum_dash_dot): letters, digits, '-' and '.', and what is not plain.
BRANCH_CHARACTERS = "aZz09-.-._!~%=?\xe9\xaa\xb2 \t"


async def test_any_branch_values_are_forwarded_as_the_present_path_forwards_them() -> None:
    async with lb() as made:
        here = f"{made.phone.host}:{made.phone.port}"

        @settings(max_examples=1000, deadline=None)
        @given(
            branch=st.text(BRANCH_CHARACTERS, max_size=12),
            cookie=st.sampled_from(["z9hG4bK", "z9hG4bK-", ""]),
            after=st.sampled_from(["", ";rport", ";x=1"]),
        )
        def check(branch: str, cookie: str, after: str) -> None:
            made.compare(
                request(made.phone, via=f"Via: SIP/2.0/UDP {here};branch={cookie}{branch}{after}")
            )

        check()
        assert len(made.taken) >= 5


async def test_over_the_rate_the_fast_path_drops_as_the_present_path_does() -> None:
    async with lb(rate_per_s=0.001, burst=2) as made:
        results = [made.compare(request(made.phone)) for _ in range(2)]
        assert results == [True, True]  # each a token from the present path and the fast one
        assert made.balancer.counters()["edge_rate_dropped"] == 2


async def test_a_scanner_is_dropped_as_the_present_path_drops_it() -> None:
    async with lb() as made:
        assert made.compare(request(made.phone, extra=("User-Agent: friendly-scanner",)))
        assert made.balancer.counters()["edge_scanners_dropped"] == 2
        assert made.proxy.drain() == []


# To lines as phones and odd clients write them: without a tag (new), with one (in a
# dialog), and what only the parser can read
TO_LINES = [
    "To: <sip:echo@127.0.0.1>",
    "To: <sip:echo@127.0.0.1>",
    "To: <sip:echo@127.0.0.1>;tag=b1",
    "To: sip:echo@127.0.0.1;tag=x-2",
    "t: <sip:echo@127.0.0.1>",
    'To: "Echo, Inc" <sip:echo@127.0.0.1>',
    "To: <sip:echo@127.0.0.1>;tag=a;tag=b",
    "To: <sip:echo@127.0.0.1>;tag=",
    "To: <sip:echo@127.0.0.1",
    "To: <sip:echo@127.0.0.1>\r\nTo: <sip:other@127.0.0.1>",
]


def as_phones_send(made: Lb, count: int) -> list[bytes]:
    """OPTIONS, INVITE, MESSAGE and BYE, new or in a dialog (a re-INVITE without Route
    is declined: not among them), each of its own Call-ID."""
    sent = []
    for n in range(count):
        method = ("OPTIONS", "INVITE", "MESSAGE", "BYE")[n % 4]
        data = request(made.phone, start=f"{method} sip:echo@127.0.0.1 SIP/2.0")
        data = data.replace(b"Call-ID: 1-4242@", f"Call-ID: {n}-sweep@".encode())
        to = TO_LINES[0] if method == "INVITE" else TO_LINES[n % 3]
        sent.append(data.replace(b"To: <sip:echo@127.0.0.1>", to.encode()))
    return sent


async def test_while_overloaded_new_requests_are_refused_and_the_rest_relayed_as_there() -> None:
    """Overloaded (the refuse-everything mark), the LB refuses every new request with a
    503 while its answer budget lasts and relays the rest: the fast path does so from
    the bytes, with the same datagrams and counts as the present path."""
    async with lb() as made:
        made.balancer.overload.overloaded = True
        budget = made.balancer.answer_budget
        budget.burst = budget.tokens = 1e9  # both paths answer every one (see below)

        @settings(
            max_examples=2000,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=requests(made.phone), to=st.sampled_from(TO_LINES))
        def check(data: bytes, to: str) -> None:
            made.compare(data.replace(b"To: <sip:echo@127.0.0.1>", to.encode()))

        check()
        shed = made.balancer.shed
        sent = as_phones_send(made, 200)
        assert all(made.compare(data) for data in sent)
        new = sum(b"To: <sip:echo@127.0.0.1>\r\n" in data for data in sent)  # no tag
        assert made.balancer.shed - shed == 2 * new  # each new one, by both paths
        assert made.proxy.drain() == []  # compare() drained what was relayed: none left


async def test_past_the_answer_budget_both_paths_drop_a_new_request() -> None:
    async with lb() as made:
        made.balancer.overload.overloaded = True
        made.balancer.answer_budget.tokens = 0.0
        assert made.compare(request(made.phone))
        assert made.balancer.shed_dropped == 2
        assert made.phone.drain() == []
        bye = request(made.phone, start="BYE sip:echo@127.0.0.1 SIP/2.0")
        assert made.compare(bye.replace(b"To: <sip:echo@127.0.0.1>", b"To: <sip:e@1.2.3.4>;tag=1"))
        assert made.balancer.answer_budget.tokens == 1.0  # earned by the two relays


async def test_a_request_grown_past_a_datagram_is_answered_513_as_by_the_present_path() -> None:
    async with lb() as made:
        # 65,480 bytes as received (under the 65,535 the parser takes); our Via and the
        # stamp make it more than a UDP datagram holds (65,507)
        data = request(made.phone, body=b"x" * (65480 - len(request(made.phone))))
        assert made.compare(data)  # the same answer from both paths
        assert made.balancer.forwarder.stats.too_large == 2
        assert made.fast.relay(data, made.peer)
        [answer] = made.phone.drain()
        assert answer.startswith(b"SIP/2.0 513 ")
        assert made.proxy.drain() == []
