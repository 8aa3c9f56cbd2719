"""A flooded registrar sheds (DESIGN §6): past its cap of REGISTERs in flight it answers
503 with Retry-After at once, absorbs retransmissions, and never queues without bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from sipfleet.config import config_from_dict
from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.overload import AnswerBudget
from sipfleet.core.registrar import MAX_BACKLOG, Registrar
from sipfleet.sip import Request, Response, parse_message
from sipfleet.storage.model import AddressOfRecord, Binding, BindingUpdate
from sipfleet.transport.base import Peer

CAP = 8


class StuckLocation:
    """Saves wait until ``release`` is set, as on a database that has stopped answering."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    async def save(
        self,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        *,
        now: int,
        max_contacts: int,
    ) -> list[Binding]:
        self.waiting += 1
        await self.release.wait()
        self.waiting -= 1
        [u] = updates
        return [
            Binding(1, "ruid", aor.username, aor.domain, u.contact, u.received, u.path, u.expires,
                    u.q, u.callid, u.cseq, now, 0, 0, u.user_agent, u.socket, u.methods,
                    u.instance, u.reg_id, u.flow)
        ]  # fmt: skip


@dataclass
class StuckStorage:
    location: StuckLocation


@dataclass
class Running:
    registrar: Registrar
    location: StuckLocation
    port: int


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    config = config_from_dict(
        {
            "node": {"cluster_secret": "test"},
            "database": {"max_in_flight": CAP},
            "registrar": {"authenticate": False, "listen": ["udp:127.0.0.1:0"]},
        }
    )
    location = StuckLocation()
    endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
    registrar = Registrar(config, StuckStorage(location), endpoint)  # type: ignore[arg-type]
    endpoint.handler = registrar
    async with endpoint:
        yield Running(registrar, location, endpoint.addresses[0].port)
        location.release.set()
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def udp_client() -> Iterator[tuple[socket.socket, int]]:
    """A non-blocking UDP socket on loopback, and its port (the REGISTERs' Via and Contact)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock, sock.getsockname()[1]


def register(user: str, local_port: int) -> bytes:
    return (
        "REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-{user}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=t\r\n"
        f"To: <sip:{user}@example.com>\r\nCall-ID: flood-{user}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{local_port}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def answers(sock: socket.socket, count: int, timeout: float = 2.0) -> list[Response]:
    loop = asyncio.get_running_loop()
    got: list[Response] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            message = parse_message(await loop.sock_recv(sock, 65535))
            assert isinstance(message, Response)
            got.append(message)
    return got


def serving_registrar(
    backlog: Callable[[], int], clock: Callable[[], float] = time.monotonic
) -> tuple[Registrar, SipEndpoint]:
    """A registrar on loopback (no digest) whose database answers at once and whose
    receive backlog reads ``backlog()``; start its endpoint to use it."""
    config = config_from_dict(
        {
            "node": {"cluster_secret": "test"},
            "registrar": {"authenticate": False, "listen": ["udp:127.0.0.1:0"]},
        }
    )
    location = StuckLocation()
    location.release.set()
    endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
    storage = StuckStorage(location)
    registrar = Registrar(config, storage, endpoint, backlog=backlog, clock=clock)  # type: ignore[arg-type]
    endpoint.handler = registrar
    return registrar, endpoint


async def test_past_the_cap_requests_get_503_with_retry_after_at_once(running: Running) -> None:
    loop = asyncio.get_running_loop()
    with udp_client() as (sock, local):
        target = ("127.0.0.1", running.port)
        users = [f"u{i:02d}" for i in range(30)]
        for user in users:
            await loop.sock_sendto(sock, register(user, local), target)
        shed = await answers(sock, len(users) - CAP)
        assert {(r.status, r.header("retry-after")) for r in shed} == {(503, "5")}
        # The first CAP are in flight, and no more: nothing else waits for the database.
        assert running.registrar.answered.in_progress == CAP
        assert running.location.waiting == CAP
        assert {r.call_id for r in shed} == {f"flood-{u}" for u in users[CAP:]}

        # A retransmission of one in flight is absorbed: no answer, nothing more in flight.
        await loop.sock_sendto(sock, register(users[0], local), target)
        with pytest.raises(TimeoutError):
            await answers(sock, 1, timeout=0.2)
        assert running.location.waiting == CAP
        # A retransmission of a shed one gets the same 503 again, without new work.
        await loop.sock_sendto(sock, register(users[-1], local), target)
        [again] = await answers(sock, 1)
        assert (again.status, again.call_id) == (503, f"flood-{users[-1]}")

        running.location.release.set()  # the database answers again
        done = await answers(sock, CAP)
        assert sorted(r.call_id for r in done) == [f"flood-{u}" for u in users[:CAP]]
        assert {r.status for r in done} == {200}
        assert running.registrar.answered.in_progress == 0


async def test_a_register_behind_a_long_receive_queue_is_shed_without_touching_the_database() -> (
    None
):
    queued = [MAX_BACKLOG + 1]
    registrar, endpoint = serving_registrar(lambda: queued[0])
    loop = asyncio.get_running_loop()
    async with endpoint:
        with udp_client() as (sock, local):
            target = ("127.0.0.1", endpoint.addresses[0].port)
            await loop.sock_sendto(sock, register("deep", local), target)
            [shed] = await answers(sock, 1)
            assert (shed.status, shed.header("retry-after")) == (503, "5")
            assert registrar.shed == 1
            queued[0] = 0  # the queue drained: the next REGISTER is served
            await loop.sock_sendto(sock, register("later", local), target)
            [served] = await answers(sock, 1)
            assert (served.status, served.call_id) == (200, "flood-later")


async def test_between_the_marks_a_register_with_credentials_still_gets_in() -> None:
    """It answers our challenge: shedding it would waste the exchange already made."""
    _, endpoint = serving_registrar(lambda: MAX_BACKLOG + 1)  # past the mark, below twice it
    loop = asyncio.get_running_loop()
    credentials = 'Authorization: Digest username="answering", realm="example.com"\r\n'
    async with endpoint:
        with udp_client() as (sock, local):
            target = ("127.0.0.1", endpoint.addresses[0].port)
            await loop.sock_sendto(sock, register("fresh", local), target)
            answering = register("answering", local).replace(
                b"Contact:", credentials.encode() + b"Contact:"
            )
            await loop.sock_sendto(sock, answering, target)
            replies = {reply.call_id: reply.status for reply in await answers(sock, 2)}
    assert replies == {"flood-fresh": 503, "flood-answering": 200}


async def test_past_the_answer_budget_a_shed_register_is_dropped_and_forgotten(
    running: Running,
) -> None:
    running.registrar.answer_budget = AnswerBudget(per_served=0.5, burst=3)
    loop = asyncio.get_running_loop()
    with udp_client() as (sock, local):
        target = ("127.0.0.1", running.port)
        users = [f"d{i:02d}" for i in range(CAP + 10)]
        for user in users:
            await loop.sock_sendto(sock, register(user, local), target)
        # CAP in flight; of the 10 past the cap, 3 get a 503 (the budget), 7 get nothing.
        shed = await answers(sock, 3)
        assert {r.status for r in shed} == {503}
        with pytest.raises(TimeoutError):
            await answers(sock, 1, timeout=0.3)
        assert (running.registrar.shed, running.registrar.dropped) == (3, 7)
        assert running.registrar.answered.in_progress == CAP  # the dropped are forgotten

        running.location.release.set()  # served: each earns half a 503
        done = await answers(sock, CAP)
        assert {r.status for r in done} == {200}
        assert running.registrar.answer_budget.tokens == 3  # CAP x 0.5 earned, capped at burst
        # A retransmission of a dropped REGISTER is a new request: now it is served.
        await loop.sock_sendto(sock, register(users[-1], local), target)
        [late] = await answers(sock, 1)
        assert (late.status, late.call_id) == (200, f"flood-{users[-1]}")


class SentBytes:
    """An endpoint that keeps what the registrar sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_bytes(self, data: bytes, destination: object) -> None:
        self.sent.append(data)

    def take(self) -> list[Response]:
        """The answers sent since the last take."""
        answers = [parse_message(data) for data in self.sent]
        self.sent.clear()
        assert all(isinstance(a, Response) for a in answers)
        return answers  # type: ignore[return-value]


async def test_over_a_connection_a_shed_register_is_always_answered() -> None:
    config = config_from_dict(
        {"node": {"cluster_secret": "test"}, "registrar": {"authenticate": False}}
    )
    endpoint = SentBytes()
    registrar = Registrar(
        config,
        StuckStorage(StuckLocation()),  # type: ignore[arg-type]
        endpoint,  # type: ignore[arg-type]
        backlog=lambda: MAX_BACKLOG + 1,
    )
    registrar.answer_budget = AnswerBudget(burst=0)  # nothing left to answer with
    for transport in ("udp", "tcp"):
        peer = Peer(transport, "127.0.0.1", 5100, "127.0.0.1", 5060, 7)
        request = parse_message(register(f"{transport}-user", 5100))
        assert isinstance(request, Request)
        registrar.on_request(request, peer)
    # UDP: dropped (its retransmission comes back); TCP: nothing is retransmitted, so 503.
    [answer] = [parse_message(data) for data in endpoint.sent]
    assert isinstance(answer, Response)
    assert (answer.status, answer.call_id) == (503, "flood-tcp-user")
    assert (registrar.dropped, registrar.shed) == (1, 1)


async def test_under_pressure_the_answers_ask_clients_that_take_part_to_refuse() -> None:
    """RFC 7339: a REGISTER whose top Via says ``oc`` (the LB's) gets, in that Via of its
    answer, the share of new requests its sender should refuse; one without it, nothing."""
    queued = [MAX_BACKLOG // 2]  # at the loss control's mark, below the shedding one
    now = [100.0]
    _, endpoint = serving_registrar(lambda: queued[0], lambda: now[0])
    loop = asyncio.get_running_loop()
    async with endpoint:
        with udp_client() as (sock, local):
            target = ("127.0.0.1", endpoint.addresses[0].port)
            await loop.sock_sendto(sock, register("first", local), target)
            [first] = await answers(sock, 1)
            assert "oc" not in first.top_via.params  # above the mark once: nothing asked yet
            now[0] += 0.2  # still above it 0.2 s later: an excess
            taking_part = register("lb", local).replace(
                b";branch=z9hG4bK-lb", b";branch=z9hG4bK-lb;oc"
            )
            await loop.sock_sendto(sock, taking_part, target)
            [served] = await answers(sock, 1)
            assert served.status == 200  # still served: the refusing is the client's
            via = served.top_via.params
            assert via["oc"] == "20"
            assert (via["oc-algo"], via["oc-validity"]) == ('"loss"', "500")
            assert float(via["oc-seq"] or "") > 0
            assert via["branch"] == "z9hG4bK-lb"  # the rest of the Via as it came
            elsewhere = register("lb2", local).replace(b";branch=", b";oc;rport;branch=")
            await loop.sock_sendto(sock, elsewhere, target)  # not last, as another client
            [other] = await answers(sock, 1)
            assert other.top_via.params["oc"] == "20"
            assert other.top_via.params["branch"] == "z9hG4bK-lb2"
            await loop.sock_sendto(sock, register("phone", local), target)
            [plain] = await answers(sock, 1)
            assert plain.status == 200
            assert "oc" not in plain.top_via.params
