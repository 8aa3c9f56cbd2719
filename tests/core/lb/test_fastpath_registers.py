"""REGISTERs through the LB's fast path (core/lb/fastpath.py) against the present path:
the harness of test_fastpath_requests.py (an LB worker composed in-process on loopback
sockets, each datagram handed to it once with the fast path and once without), with a
registrar in the pool. A REGISTER is relayed with the Path naming the phone's flow and
our Via carrying its token, its Contacts' digests, the edge guard's lockout mark and
``oc``; or refused for its registrar (RFC 7339) with the present path's 503."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfleet.core.lb.guard import lockout_key
from sipfleet.core.lb.keepalive import contact_digest
from sipfleet.sip import Request, parse_message
from sipfleet.sip.flow import FlowTokens
from sipfleet.storage import LbTarget
from sipfleet.transport.base import Peer
from tests.core.lb.messages import MULTIPART
from tests.core.lb.test_fastpath_requests import Lb, Socket, _delta, lb, request, vias

CREDENTIALS = (
    'Authorization: Digest username="u1", realm="127.0.0.1", nonce="4f2a", '
    'uri="sip:127.0.0.1", response="8c1d2e3f0a9b8c7d6e5f4a3b2c1d0e9f", algorithm=MD5'
)


def registrar_of(made: Lb, loss: int = 0) -> Socket:
    """A registrar in the pool; one that has asked the LB to refuse ``loss`` % of new
    REGISTERs when ``loss``."""
    registrar = Socket()
    made.more.append(registrar)
    made.balancer.router.pools.update(
        [
            LbTarget(1, "proxy", f"sip:127.0.0.1:{made.proxy.port}", 1, "active"),
            LbTarget(2, "registrar", f"sip:127.0.0.1:{registrar.port}", 1, "active"),
        ]
    )
    if loss:
        oc = {"oc": str(loss), "oc-algo": '"loss"', "oc-validity": "60000", "oc-seq": "1"}
        made.balancer.loss.heard(("127.0.0.1", registrar.port), oc, time.monotonic())
    return registrar


def register(phone: Socket, n: int = 1, extra: tuple[str, ...] = (), contact: str = "") -> bytes:
    """sipp's REGISTER (bench/register_bench.py), the first of an exchange; with
    ``contact`` (a URI) as its Contact instead of the phone's address."""
    here = f"{phone.host}:{phone.port}"
    return request(
        phone,
        start="REGISTER sip:127.0.0.1 SIP/2.0",
        via=f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-{n}-1-0",
        extra=(f"Contact: <{contact or f'sip:u{n}@{here}'}>", "Expires: 3600", *extra),
    ).replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 REGISTER")


# -- relayed ------------------------------------------------------------------------------------
async def test_a_register_is_relayed_with_the_path_and_our_via_of_the_present_path() -> None:
    async with lb() as made:
        registrar = registrar_of(made)
        assert made.compare(register(made.phone, 7))
        assert made.compare(register(made.phone, 8, (CREDENTIALS,)))
        assert made.fast.requests == 2
        assert made.fast.relay(register(made.phone, 9, (CREDENTIALS,)), made.peer)
        [forwarded] = registrar.drain()
        message = parse_message(forwarded)
        assert isinstance(message, Request)
        [path] = message.header_values("path")
        token = path[len("<sip:") : path.index("@")]
        flow = FlowTokens(b"fast-path-test").decode(token)
        assert flow is not None
        assert (flow.host, flow.port) == (made.phone.host, made.phone.port)
        assert path.endswith(f"@127.0.0.1:{made.port};lr>")
        ours = message.vias[0].params
        assert ours["lbf"] == token
        here = f"{made.phone.host}:{made.phone.port}"
        assert ours["lbc"] == contact_digest(f"sip:u9@{here}")
        assert ours["lba"]  # the lockout mark: the answer tells the LB how the guess went
        assert "oc" in ours  # RFC 7339: the registrar may ask for a share refused
        assert message.header("authorization") == CREDENTIALS.partition(": ")[2]
        registrar.sock.close()


async def test_a_locked_pairs_register_is_left_to_the_present_path() -> None:
    async with lb() as made:
        registrar = registrar_of(made)
        guard = made.balancer.guard
        assert guard is not None
        assert guard.lockouts is not None
        key = lockout_key("u1", made.phone.host)
        for _ in range(5):
            guard.lockouts.failed(key, time.monotonic())
        assert guard.lockouts.locked(key, time.monotonic())
        assert not made.fast.relay(register(made.phone, 1, (CREDENTIALS,)), made.peer)
        assert made.compare(register(made.phone, 2))  # without credentials: not locked
        registrar.sock.close()


CONTACTS = [
    "",
    "Contact: <sip:u@{here}>",
    "Contact: <sip:u@{here}>;expires=0",
    "Contact: <sip:u@192.168.1.20:5060>",  # a private host: behind NAT
    "Contact: <sip:u@{here};ob>",  # RFC 5626
    'Contact: <sip:u@{here}>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-1>"',
    "Contact: *",
    "Contact: <sip:a@{here}>, <sip:b@{here}>",
    "Contact: <sip:a@{here}>\r\nContact: <sip:b@10.0.0.1>",
    "Contact: " + ", ".join(f"<sip:c{n}@{{here}}>" for n in range(6)),  # more than are carried
    "Contact: sip:u@{here}",
    'Contact: "Alice" <sip:u@{here}>;q=0.5',
    "Contact: <sip:>",
    "Contact: *, <sip:u@{here}>",
    "Contact: <sip:u@{here}",
]
EXTRAS = [
    CREDENTIALS,
    CREDENTIALS,
    'Proxy-Authorization: Digest username="u2", realm="127.0.0.1", nonce="1"',
    f'{CREDENTIALS}\r\nAuthorization: Digest username="u3"',
    'Authorization: Digest realm="127.0.0.1", nonce="1"',  # no username
    "Authorization: Basic dTE6cA==",
    "Authorization: ",
    'authorization: Digest username="u4"',
    "User-Agent: baresip v3.10.1 (x86_64/linux)",
    "User-Agent: friendly-scanner",
    "Path: <sip:10.0.0.1;lr>",
    "Route: <sip:127.0.0.1;lr>",
    "Record-Route: <sip:10.0.0.2;lr>",
    "Expires: 600",
    "Supported: path, outbound",
    "X-Custom: 1",
    "Bad Name: x",
]


@st.composite
def registers(draw: st.DrawFn, phone: Socket) -> bytes:
    here = f"{phone.host}:{phone.port}"
    start = draw(
        st.sampled_from(
            ["REGISTER sip:127.0.0.1 SIP/2.0"] * 6
            + ["REGISTER  sip:127.0.0.1 SIP/2.0", "REGISTER sip:127.0.0.1 SIP/2.1"]
        )
    )
    via = draw(st.sampled_from(vias(phone)))
    max_forwards = draw(
        st.sampled_from(["Max-Forwards: 70"] * 4 + ["Max-Forwards: 0", "Max-Forwards: x", ""])
    )
    contact = draw(st.sampled_from(CONTACTS)).replace("{here}", here)
    extra = draw(st.lists(st.sampled_from(EXTRAS), max_size=3))
    to_tag = draw(st.sampled_from(["", "", "", ";tag=abc"]))
    body = draw(st.sampled_from([b"", b"", b"", b"hello\r\n", MULTIPART]))
    data = request(
        phone,
        start=start,
        via=via,
        max_forwards=max_forwards,
        extra=(contact, *extra),
        body=body,
    )
    data = data.replace(b"To: <sip:echo@127.0.0.1>", f"To: <sip:u@127.0.0.1>{to_tag}".encode())
    data = data.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 REGISTER")
    if draw(st.integers(0, 9)) == 0:
        data = data.replace(b"\r\n", b"\n")
    return data


@pytest.mark.parametrize("loss", [0, 100])
async def test_registers_are_relayed_or_refused_as_by_the_present_path_or_declined(
    loss: int,
) -> None:
    """``loss``: the share of new REGISTERs the registrar asked to be refused (RFC 7339):
    none (each relayed) or all (each without credentials refused, the rest relayed)."""
    async with lb() as made:
        registrar = registrar_of(made, loss)

        @settings(
            max_examples=1200,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=registers(made.phone))
        def check(data: bytes) -> None:
            made.compare(data)

        check()
        assert len(made.taken) >= 30  # not only declines (most draws have something odd)
        registrar.sock.close()


# Each way a REGISTER's flow and marks are made: taken from its bytes, as the present path
# relays it
TAKEN = [
    (),
    (CREDENTIALS,),
    ('Proxy-Authorization: Digest username="u2", realm="127.0.0.1", nonce="1"',),
    (f'{CREDENTIALS}\r\nAuthorization: Digest username="u3"',),
    ('Authorization: Digest realm="127.0.0.1", nonce="1"',),
    ("Authorization: Basic dTE6cA==",),
    ("Contact: *",),
    ("Contact: <sip:u@192.168.1.20:5060>",),
    ("Contact: <sip:u@127.0.0.1:5062;ob>",),
    ('Contact: <sip:u@127.0.0.1:5062>;reg-id=1;+sip.instance="<urn:uuid:1>"',),
    ("Contact: " + ", ".join(f"<sip:c{n}@127.0.0.1>" for n in range(6)),),
    ("User-Agent: baresip v3.10.1 (x86_64/linux)", "Supported: path, outbound"),
]


@pytest.mark.parametrize("extra", TAKEN)
async def test_each_kind_of_register_is_taken(extra: tuple[str, ...]) -> None:
    async with lb() as made:
        registrar = registrar_of(made)
        data = register(made.phone, 3, extra)
        if any(line.startswith("Contact:") for line in extra):  # instead of sipp's
            data = data.replace(f"Contact: <sip:u3@127.0.0.1:{made.phone.port}>\r\n".encode(), b"")
        assert made.compare(data)
        registrar.sock.close()


# -- refused for an overloaded registrar (RFC 7339) ----------------------------------------------
async def test_a_register_its_registrar_asked_to_refuse_gets_the_present_paths_503() -> None:
    async with lb() as made:
        registrar = registrar_of(made, 100)
        assert made.compare(register(made.phone))
        assert made.balancer.loss.refused == 2  # once by each path
        assert made.fast.relay(register(made.phone, 2), made.peer)
        [answer] = made.phone.drain()
        assert answer.startswith(b"SIP/2.0 503 Overloaded\r\n")
        assert b"\r\nRetry-After: 5\r\n" in answer
        assert registrar.drain() == []
        registrar.sock.close()


async def test_registers_are_refused_as_the_present_path_draws_them_never_with_credentials() -> (
    None
):
    async with lb() as made:
        registrar = registrar_of(made, 50)
        parse_message(register(made.phone))  # its header names known, as a running LB knows them
        assert all(made.compare(register(made.phone, n)) for n in range(200))
        refused = made.balancer.loss.refused // 2  # each refused by both paths
        assert 70 <= refused <= 130  # about half
        assert all(made.compare(register(made.phone, n, (CREDENTIALS,))) for n in range(50))
        assert made.balancer.loss.refused // 2 == refused  # an answer to a challenge: relayed
        registrar.sock.close()


# -- the registrar's answers ----------------------------------------------------------------
def answer_to(
    forwarded: bytes,
    status: str,
    oc_value: str = "",
    extra: tuple[str, ...] = ('WWW-Authenticate: Digest realm="127.0.0.1", nonce="4f2a"',),
) -> bytes:
    """The registrar's answer to ``forwarded`` as core/registrar.py writes it: the Vias
    copied, the LB's bare ``oc`` given ``oc_value`` (``LossControl.oc_value``), then
    ``extra`` (a challenge by default)."""
    message = parse_message(forwarded)
    assert isinstance(message, Request)
    vias = message.header_values("via")
    ours = vias[0] + oc_value
    lines = [
        f"SIP/2.0 {status}",
        f"Via: {ours}",
        *(f"Via: {via}" for via in vias[1:]),
        f"From: {message.header('from')}",
        f"To: {message.header('to')};tag=r1",
        f"Call-ID: {message.call_id}",
        f"CSeq: {message.header('cseq')}",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_401_asking_for_a_loss_is_relayed_and_heard_as_by_the_present_path() -> None:
    """Under overload every answer of the registrar carries its loss (RFC 7339): the 401
    is relayed from its bytes all the same, and the LB refuses what it asks, as when the
    present path reads it."""
    async with lb() as made:
        registrar = registrar_of(made)
        server = ("127.0.0.1", registrar.port)
        from_registrar = Peer("udp", *server, "127.0.0.1", made.port)
        assert made.fast.relay(register(made.phone, 1), made.peer)
        [forwarded] = registrar.drain()
        asked = '=30;oc-algo="loss";oc-validity=500;oc-seq=7.250'
        challenge = answer_to(forwarded, "401 Unauthorized", asked)

        assert made.fast.relay(challenge, from_registrar)
        fast = (made.phone.drain(), made.balancer.loss.asked(server))
        made.balancer.loss.take(server, 0, 0.0, 0.0, time.monotonic())  # forgotten
        with made.present_path():
            made.endpoint.frame_received(challenge, from_registrar)
        present = (made.phone.drain(), made.balancer.loss.asked(server))

        assert fast[0] == present[0]
        [relayed] = fast[0]
        assert relayed.startswith(b"SIP/2.0 401 ")
        assert b"oc-algo" not in relayed  # our Via, with what the registrar wrote in it
        assert fast[1][0] == present[1][0] == 30
        assert fast[1][2] == present[1][2] == 7.25
        assert made.fast.responses == 1
        registrar.sock.close()


async def test_overload_control_from_outside_the_cluster_is_not_heard() -> None:
    """Only a pool target's answer may make the LB refuse (the phone could forge one)."""
    async with lb() as made:
        registrar = registrar_of(made)
        server = ("127.0.0.1", registrar.port)
        assert made.fast.relay(register(made.phone, 1), made.peer)
        [forwarded] = registrar.drain()
        forged = answer_to(forwarded, "401 Unauthorized", '=95;oc-algo="loss";oc-seq=9')
        made.fast.relay(forged, made.peer)
        assert made.balancer.loss.asked(server)[0] == 0
        assert made.balancer.loss.asked((made.phone.host, made.phone.port))[0] == 0
        registrar.sock.close()


async def test_the_answers_to_a_register_with_credentials_are_relayed_and_read_as_there() -> None:
    """Our Via on a REGISTER with credentials carries the edge guard's lockout mark and,
    for a phone behind NAT, its flow. The registrar's answers are relayed from their
    bytes, then read as the present path reads them: a 401 counts against the pair, a
    2xx forgives it and keeps the flow alive for the registration's lifetime, a 2xx
    without the binding ends it."""
    async with lb() as made:
        registrar = registrar_of(made)
        from_registrar = Peer("udp", "127.0.0.1", registrar.port, "127.0.0.1", made.port)
        guard = made.balancer.guard
        assert guard is not None
        assert guard.lockouts is not None
        key = lockout_key("u1", made.phone.host)
        behind_nat = "sip:u1@192.168.1.20:5060"  # a private Contact: the LB keeps the flow
        answers = (
            ("401 Unauthorized", ('WWW-Authenticate: Digest realm="127.0.0.1", nonce="5"',)),
            ("200 OK", (f"Contact: <{behind_nat}>;expires=600",)),
            ("200 OK", (f"Contact: <{behind_nat}>;expires=0",)),
        )
        Outcome = tuple[list[bytes], dict[str, Any], tuple[bool, int]]
        outcomes: dict[bool, list[Outcome]] = {True: [], False: []}
        for fast in (True, False):
            for status, extra in answers:
                sent = register(made.phone, 1, (CREDENTIALS,), behind_nat)
                assert made.fast.relay(sent, made.peer)
                [forwarded] = registrar.drain()
                answer = answer_to(forwarded, status, extra=extra)
                before = made.counts()
                if fast:
                    assert made.fast.relay(answer, from_registrar)
                else:
                    with made.present_path():
                        made.endpoint.frame_received(answer, from_registrar)
                counted = _delta(before, made.counts())
                counted.pop("fast", None)
                state = (key in guard.lockouts.pairs.table, len(made.balancer.keepalives.table))
                outcomes[fast].append((made.phone.drain(), counted, state))
        assert outcomes[True] == outcomes[False]
        relayed = [datagrams for datagrams, _, _ in outcomes[True]]
        assert [len(datagrams) for datagrams in relayed] == [1, 1, 1]
        assert relayed[1][0].startswith(b"SIP/2.0 200 OK\r\n")
        # the 401 counted against the pair; the 2xx forgave it and kept the flow; the
        # 2xx without the binding ended the flow
        assert [state for _, _, state in outcomes[True]] == [(True, 0), (False, 1), (False, 0)]
        assert made.fast.responses == 3
        registrar.sock.close()


async def test_a_2xx_asking_for_a_loss_keeps_the_flow_and_is_heard() -> None:
    """Under overload the registrar's 2xx carries its loss after our flow's marks: both
    paths relay it, keep the phone's flow alive and take the loss it asks."""
    async with lb() as made:
        registrar = registrar_of(made)
        server = ("127.0.0.1", registrar.port)
        from_registrar = Peer("udp", *server, "127.0.0.1", made.port)
        behind_nat = "sip:u1@192.168.1.20:5060"
        asked = '=40;oc-algo="loss";oc-validity=500;oc-seq=3.5'
        outcomes = []
        for fast in (True, False):
            sent = register(made.phone, 1, (CREDENTIALS,), behind_nat)
            assert made.fast.relay(sent, made.peer)
            [forwarded] = registrar.drain()
            answer = answer_to(
                forwarded, "200 OK", asked, (f"Contact: <{behind_nat}>;expires=600",)
            )
            if fast:
                assert made.fast.relay(answer, from_registrar)
            else:
                with made.present_path():
                    made.endpoint.frame_received(answer, from_registrar)
            table = made.balancer.keepalives.table
            kept = [list(flow.registrations) for flow in table.by_token.values()]
            outcomes.append((made.phone.drain(), kept, made.balancer.loss.asked(server)[::2]))
            made.balancer.loss.take(server, 0, 0.0, 0.0, time.monotonic())  # forgotten
            ended = answer_to(forwarded, "200 OK", "", (f"Contact: <{behind_nat}>;expires=0",))
            with made.present_path():
                made.endpoint.frame_received(ended, from_registrar)
            made.phone.drain()
            assert len(table) == 0
        assert outcomes[0] == outcomes[1]
        [relayed], [registrations], loss = outcomes[0]
        assert relayed.startswith(b"SIP/2.0 200 OK\r\n")
        assert registrations == ["sip:echo@127.0.0.1"]  # the To of the harness's REGISTER
        assert loss == (40, 3.5)
        registrar.sock.close()
