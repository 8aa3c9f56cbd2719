"""Two workers' steering in one process, over real inboxes (AF_UNIX socketpairs)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from sipfleet.transport.base import Destination, Peer, TransportError
from sipfleet.transport.inboxes import Pair, WorkerSteering, make_inboxes
from sipfleet.transport.steering import owner_of_call_id

IDS = 1 << 32
UDP_PEER = Peer("udp", "192.0.2.7", 5060, "127.0.0.1", 5080, None)


def message(call_id: str) -> bytes:
    return (
        f"OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n\r\n"
    ).encode()


def call_id_of_worker(worker: int) -> str:
    return next(f"c{n}" for n in range(100) if owner_of_call_id(f"c{n}".encode(), 2) == worker)


@dataclass
class FakeEndpoint:
    """Records what it is given; asks its steering again, as the real endpoint does."""

    steering: WorkerSteering | None = None
    received: list[tuple[bytes, Peer]] = field(default_factory=list)
    sent: list[tuple[bytes, Destination]] = field(default_factory=list)
    steered_again: list[bool] = field(default_factory=list)

    def frame_received(self, data: bytes, peer: Peer) -> None:
        assert self.steering is not None
        self.steered_again.append(self.steering.elsewhere(data, peer))
        self.received.append((data, peer))

    def send_bytes(self, data: bytes, destination: Destination) -> None:
        assert self.steering is not None
        self.steered_again.append(self.steering.sent_elsewhere(data, destination))
        self.sent.append((data, destination))


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    made = make_inboxes(2)
    yield made
    for pair in made:
        for sock in pair:
            sock.close()


@pytest.fixture
async def workers(pairs: list[Pair]) -> list[tuple[WorkerSteering, FakeEndpoint]]:
    # both ends in one process: what in_worker leaves each worker, without closing
    made = []
    for index in (0, 1):
        other = 1 - index
        steering = WorkerSteering(index, pairs[index][1], {other: pairs[other][0]}, IDS)
        endpoint = FakeEndpoint(steering)
        steering.start(endpoint)
        made.append((steering, endpoint))
    return made


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_a_message_of_another_worker_is_handled_there_once(
    workers: list[tuple[WorkerSteering, FakeEndpoint]],
) -> None:
    (first, first_endpoint), (_, second_endpoint) = workers
    data = message(call_id_of_worker(1))
    assert first.elsewhere(data, UDP_PEER)
    await settle()
    assert second_endpoint.received == [(data, UDP_PEER)]
    assert second_endpoint.steered_again == [False]  # handled there, not handed back
    assert first_endpoint.received == []
    assert first.handed == 1


async def test_own_messages_and_those_without_call_id_stay(
    workers: list[tuple[WorkerSteering, FakeEndpoint]],
) -> None:
    first, _ = workers[0]
    assert not first.elsewhere(message(call_id_of_worker(0)), UDP_PEER)
    assert not first.elsewhere(b"INVITE sip:x SIP/2.0\r\n\r\n", UDP_PEER)
    assert first.handed == 0


async def test_a_tcp_peer_is_handed_with_its_connection(
    workers: list[tuple[WorkerSteering, FakeEndpoint]],
) -> None:
    (first, _), (_, second_endpoint) = workers
    peer = Peer("tcp", "192.0.2.7", 40000, "127.0.0.1", 5080, 17)  # worker 0's connection
    assert first.elsewhere(message(call_id_of_worker(1)), peer)
    await settle()
    assert second_endpoint.received[0][1] == peer


async def test_bytes_for_another_workers_connection_go_through_it(
    workers: list[tuple[WorkerSteering, FakeEndpoint]],
) -> None:
    (_, first_endpoint), (second, _) = workers
    destination = Destination("tcp", "192.0.2.7", 40000, 17, ("127.0.0.1", 5080))
    assert second.sent_elsewhere(b"SIP/2.0 200 OK\r\n\r\n", destination)
    await settle()
    assert first_endpoint.sent == [(b"SIP/2.0 200 OK\r\n\r\n", destination)]
    assert first_endpoint.steered_again == [False]


async def test_an_answer_to_a_handed_message_goes_back_through_the_connections_worker(
    workers: list[tuple[WorkerSteering, FakeEndpoint]],
) -> None:
    """Worker 1 handles a message from worker 0's TCP connection and answers it at once:
    the answer is handed back to worker 0, which writes it."""
    (first, first_endpoint), (second, second_endpoint) = workers
    peer = Peer("tcp", "192.0.2.7", 40000, "127.0.0.1", 5080, 17)

    def answer(data: bytes, peer: Peer) -> None:
        assert second.sent_elsewhere(b"SIP/2.0 100 Trying\r\n\r\n", peer.reply_to)

    second_endpoint.frame_received = answer  # type: ignore[method-assign]
    assert first.elsewhere(message(call_id_of_worker(1)), peer)
    await settle()
    assert [data for data, _ in first_endpoint.sent] == [b"SIP/2.0 100 Trying\r\n\r\n"]


async def test_own_connections_and_udp_are_sent_here(
    workers: list[tuple[WorkerSteering, FakeEndpoint]],
) -> None:
    second, _ = workers[1]
    assert not second.sent_elsewhere(b"x", Destination("tcp", "192.0.2.7", 1, IDS + 3))
    assert not second.sent_elsewhere(b"x", Destination("tcp", "192.0.2.7", 1, None))
    assert not second.sent_elsewhere(b"x", Destination("udp", "192.0.2.7", 1))
    assert not second.sent_elsewhere(b"x", Destination("tcp", "192.0.2.7", 1, 9 * IDS))


async def test_a_full_inbox_loses_messages_as_the_network_would(pairs: list[Pair]) -> None:
    first = WorkerSteering(0, pairs[0][1], {1: pairs[1][0]}, IDS)  # worker 1 never reads
    data = message(call_id_of_worker(1)) + b"x" * 8000
    results = [first.elsewhere(data, UDP_PEER) for _ in range(2000)]
    assert all(results)
    assert first.dropped > 0
    assert first.handed + first.dropped == 2000
    with pytest.raises(TransportError):  # TCP bytes are not lost silently
        first.sent_elsewhere(data, Destination("tcp", "192.0.2.7", 1, IDS + 1))


def test_the_backlog_is_what_waits_in_the_own_inbox() -> None:
    pairs = make_inboxes(2)
    first = WorkerSteering.in_worker(0, pairs, IDS)
    assert first.backlog() == 0
    pairs[0][0].send(message(call_id_of_worker(0)))  # as worker 1 would hand it
    assert first.backlog() > 0
    pairs[0][1].recv(65536)
    assert first.backlog() == 0
    for pair in pairs:
        for sock in pair:
            sock.close()


def test_owns_call_id_agrees_with_the_owner(pairs: list[Pair]) -> None:
    first = WorkerSteering(0, pairs[0][1], {1: pairs[1][0]}, IDS)
    assert first.owns_call_id(call_id_of_worker(0))
    assert not first.owns_call_id(call_id_of_worker(1))


def test_a_worker_keeps_only_its_own_ends() -> None:
    pairs = make_inboxes(3)
    steering = WorkerSteering.in_worker(1, pairs, IDS)
    closed = [[sock.fileno() == -1 for sock in pair] for pair in pairs]
    assert closed == [[False, True], [False, False], [False, True]]
    assert steering.workers == 3
    for pair in pairs:
        for sock in pair:
            sock.close()


def test_no_outsider_can_reach_an_inbox(pairs: list[Pair]) -> None:
    """A socketpair has no address: nothing to send to from outside the process tree."""
    for pair in pairs:
        for sock in pair:
            assert sock.family == socket.AF_UNIX
            assert sock.getsockname() in ("", b"", None)
