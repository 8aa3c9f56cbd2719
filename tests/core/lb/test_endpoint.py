"""Two LB workers' endpoints on real sockets: handoffs between their control sockets, and
nothing else accepted as one."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from sipfleet.config.listen import parse_listen
from sipfleet.core.endpoint import CONNECTION_IDS_PER_WORKER
from sipfleet.core.lb import handoff
from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.transport.base import Destination, MessageTooLarge, Peer
from sipfleet.transport.sockets import bind_all
from tests.transport.helpers import TIMEOUT, Recorder, UdpClient


class Worker:
    def __init__(self, endpoint: LbEndpoint, recorder: Recorder) -> None:
        self.endpoint = endpoint
        self.recorder = recorder
        self.handed: asyncio.Queue[tuple[handoff.Handed, int]] = asyncio.Queue()
        endpoint.on_handoff = lambda message, sender: self.handed.put_nowait((message, sender))


@asynccontextmanager
async def two_workers() -> AsyncIterator[list[Worker]]:
    listen = [parse_listen("udp:127.0.0.1:0"), parse_listen("tcp:127.0.0.1:0")]
    controls = [bind_all([parse_listen("udp:127.0.0.1:0")])[0] for _ in range(2)]
    addresses = {i: sock.getsockname()[:2] for i, sock in enumerate(controls)}
    workers = []
    async with AsyncExitStack() as stack:
        for index in range(2):
            recorder = Recorder()
            endpoint = LbEndpoint(
                listen,
                sockets=[*bind_all(listen), controls[index]],
                control=addresses[index],
                siblings=addresses,
                worker_index=index,
            )
            endpoint.handler = recorder
            await stack.enter_async_context(endpoint)
            workers.append(Worker(endpoint, recorder))
        yield workers


async def test_a_sibling_is_heard_and_a_stranger_is_not() -> None:
    async with two_workers() as (first, second):
        learn = handoff.Learn("token", "sip:alice@example.com", 60)
        first.endpoint.hand_over(1, learn)
        assert await asyncio.wait_for(second.handed.get(), TIMEOUT) == (learn, 0)
        stranger = UdpClient()
        stranger.send(handoff.encode(learn), second.endpoint.control)
        await asyncio.sleep(0.2)
        assert second.handed.empty()
        assert second.endpoint.handoffs_refused == 1
        stranger.sock.close()


async def test_a_received_message_is_handled_by_the_worker_it_is_handed_to() -> None:
    async with two_workers() as (first, second):
        data = (
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
            b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        local = first.endpoint.control  # the peer of the original: it rides along
        origin = Peer("udp", "192.0.2.7", 5090, local[0], local[1])
        first.endpoint.hand_over(1, handoff.Received(data, origin))
        request, seen = await second.recorder.request()
        assert (request.method, seen) == ("OPTIONS", origin)


async def test_bytes_for_another_workers_connection_go_out_on_it() -> None:
    async with two_workers() as (first, second):
        tcp = next(a for a in second.endpoint.addresses if a.transport == "tcp")
        loop = asyncio.get_running_loop()
        client = socket.create_connection((tcp.host, tcp.port))
        client.setblocking(False)
        client.sendall(
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK2\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
            b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        _, peer = await second.recorder.request()
        assert peer.connection_id is not None
        assert peer.connection_id // CONNECTION_IDS_PER_WORKER == 1
        # Worker 0 sends on worker 1's connection: it is handed over and written there.
        destination = Destination("tcp", peer.host, peer.port, peer.connection_id)
        first.endpoint.send_bytes(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", destination)
        data = await asyncio.wait_for(loop.sock_recv(client, 1000), TIMEOUT)
        assert data.startswith(b"SIP/2.0 200 OK")
        assert first.endpoint.handoffs_sent == 1
        client.close()


async def test_bytes_too_large_to_hand_over_are_a_message_too_large(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with two_workers() as (first, _second):
        # Fits in a datagram, but not with the handoff's head in front: a forwarded
        # request of that size is answered 513 (the forwarder tells this error apart).
        destination = Destination("tcp", "127.0.0.1", 5090, CONNECTION_IDS_PER_WORKER + 1)
        with caplog.at_level(logging.DEBUG, logger="sipfleet.core.lb"):
            with pytest.raises(MessageTooLarge):
                first.endpoint.send_bytes(b"x" * 65500, destination)
            origin = Peer("udp", "192.0.2.7", 5090, "127.0.0.1", 5060)
            assert not first.endpoint.hand_over(1, handoff.Received(b"x" * 65500, origin))
        assert first.endpoint.counters()["handoffs_too_large"] == 2
        assert first.endpoint.handoffs_sent == 0
        # Input can do this: no warning for each one.
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
