"""TCP over real sockets: framing, keep-alives, the connection table and its limits."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from sipfleet.config.listen import parse_listen
from sipfleet.transport import Destination, TransportError, TransportLimits, bind_all
from sipfleet.transport.tcp import TcpTransport
from tests.transport.helpers import TIMEOUT, ipv6_available, options
from tests.transport.sinks import RecordingSink

FAST = TransportLimits(idle_timeout_s=30, read_timeout_s=30)


async def open_tcp(
    limits: TransportLimits = FAST, listen: str = "tcp:127.0.0.1:0", base: int = 0
) -> tuple[TcpTransport, RecordingSink]:
    sink = RecordingSink()
    transport = TcpTransport(sink, limits, connection_id_base=base)
    await transport.start(bind_all([parse_listen(listen)]))
    return transport, sink


@pytest.fixture
async def tcp() -> AsyncIterator[tuple[TcpTransport, RecordingSink]]:
    transport, sink = await open_tcp()
    yield transport, sink
    await transport.close()


async def connect(
    transport: TcpTransport,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*transport.addresses[0])


async def closed_by_server(reader: asyncio.StreamReader, within: float = TIMEOUT) -> bytes:
    """Everything the server still sent, once it has closed the connection."""
    return await asyncio.wait_for(reader.read(), within)


async def test_several_messages_in_one_segment(tcp) -> None:
    transport, sink = tcp
    _reader, writer = await connect(transport)
    messages = [options("127.0.0.1:5999", branch=f"z9hG4bK-{n}") for n in range(3)]
    writer.write(b"".join(messages))
    got = [await sink.frame() for _ in messages]
    assert [data for data, _ in got] == messages
    peers = {peer for _, peer in got}
    assert len(peers) == 1
    (peer,) = peers
    assert peer.transport == "tcp"
    assert (peer.host, peer.port) == writer.get_extra_info("sockname")
    assert transport.connection(peer.connection_id) is not None
    writer.close()


async def test_one_message_in_many_writes(tcp) -> None:
    transport, sink = tcp
    _reader, writer = await connect(transport)
    message = options("127.0.0.1:5999", body=b"v=0\r\n")
    for at in range(0, len(message), 7):
        writer.write(message[at : at + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    data, _ = await sink.frame()
    assert data == message
    assert sink.frames.empty()
    writer.close()


async def test_crlfcrlf_ping_gets_a_crlf_pong(tcp) -> None:
    transport, sink = tcp
    reader, writer = await connect(transport)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\r\n"
    assert transport.counters()["tcp_pings_answered"] == 1
    writer.write(options("127.0.0.1:5999"))  # the stream goes on after a ping
    data, _ = await sink.frame()
    assert data.startswith(b"OPTIONS")
    writer.close()


async def test_pings_past_the_budget_are_not_answered_until_it_refills() -> None:
    transport, _ = await open_tcp(TransportLimits(pong_burst=3, pongs_per_s=20.0))
    try:
        reader, writer = await connect(transport)
        writer.write(b"\r\n\r\n" * 50)  # one segment: no time to refill in between
        assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"\r\n" * 3
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.1)
        counters = transport.counters()
        assert (counters["tcp_pings_answered"], counters["tcp_pings_unanswered"]) == (3, 47)
        await asyncio.sleep(0.3)  # 6 pongs' worth at 20 a second, the bucket holds 3
        writer.write(b"\r\n\r\n" * 10)
        assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"\r\n" * 3
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.1)
        assert transport.counters()["tcp_pings_unanswered"] == 54
        writer.close()
    finally:
        await transport.close()


async def test_pings_from_a_peer_that_resets_are_dropped_quietly(
    tcp, caplog: pytest.LogCaptureFixture
) -> None:
    transport, _ = tcp
    client = socket.create_connection(transport.addresses[0])
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await asyncio.sleep(0.05)  # accepted
    with caplog.at_level(logging.DEBUG, logger="sipfleet.transport"):
        client.sendall(b"\r\n\r\n" * 5)
        client.close()  # RST: the pings are read, the first pong's write finds it gone
        for _ in range(100):  # at most 2 s
            if transport.open_connections == 0:
                break
            await asyncio.sleep(0.02)
    assert transport.open_connections == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_connections_reset_before_they_are_served_are_dropped_quietly(
    tcp, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel completes the handshake; the client resets before the loop takes the
    connection up, so it has no peer address by then."""
    transport, _ = tcp
    with caplog.at_level(logging.WARNING):
        for _ in range(20):  # without awaiting: all reset before the loop runs again
            client = socket.create_connection(transport.addresses[0])
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        for _ in range(25):  # let the loop take them up: 0.5 s
            await asyncio.sleep(0.02)
    assert transport.open_connections == 0
    assert [r.getMessage() for r in caplog.records] == []


async def test_answer_to_a_remote_address_reuses_its_connection(tcp) -> None:
    transport, sink = tcp
    reader, writer = await connect(transport)
    writer.write(options("127.0.0.1:5999"))
    _, peer = await sink.frame()
    # No connection id: found by the remote address alone.
    transport.send(
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", Destination("tcp", peer.host, peer.port)
    )
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert data.startswith(b"SIP/2.0 200 OK")
    assert transport.open_connections == 1
    writer.close()


async def test_outbound_sends_share_one_connection_in_order(tcp) -> None:
    client, _ = tcp
    server, server_sink = await open_tcp()
    try:
        host, port = server.addresses[0]
        messages = [options("127.0.0.1:5999", branch=f"z9hG4bK-{n}") for n in range(5)]
        for message in messages:  # queued while the connection is being opened
            client.send(message, Destination("tcp", host, port))
        got = [await server_sink.frame() for _ in messages]
        assert [data for data, _ in got] == messages
        assert len({peer.connection_id for _, peer in got}) == 1
        client.send(messages[0], Destination("tcp", host, port))  # later: reused
        await server_sink.frame()
        assert server.counters()["tcp_accepted"] == 1
        assert client.counters()["tcp_connected"] == 1
        # The source IP of the connection is the listener's, not the wildcard.
        assert got[0][1].host == client.addresses[0][0]
    finally:
        await server.close()


async def test_send_while_the_connection_closes_opens_a_new_one(tcp) -> None:
    client, _ = tcp
    server, server_sink = await open_tcp()
    try:
        host, port = server.addresses[0]
        client.send(options("127.0.0.1:5999", branch="z9hG4bK-a"), Destination("tcp", host, port))
        _, first = await server_sink.frame()
        old = client.connection_to(host, port)
        assert old is not None
        old.close()  # closing, not yet gone from the table
        client.send(options("127.0.0.1:5999", branch="z9hG4bK-b"), Destination("tcp", host, port))
        data, second = await server_sink.frame()
        assert b"z9hG4bK-b" in data
        assert second.connection_id != first.connection_id
    finally:
        await server.close()


async def test_failed_connect_is_reported_to_the_sink(tcp) -> None:
    transport, sink = tcp
    probe, _ = await open_tcp()
    host, port = probe.addresses[0]
    await probe.close()  # nobody listens there any more
    await asyncio.sleep(0.01)
    transport.send(b"OPTIONS", Destination("tcp", host, port))
    for _ in range(100):
        if sink.failed:
            break
        await asyncio.sleep(0.02)
    ((destination, error),) = sink.failed
    assert (destination.host, destination.port) == (host, port)
    assert isinstance(error, TransportError)
    assert transport.counters()["tcp_connect_failed"] == 1


async def test_idle_connection_is_closed() -> None:
    transport, _ = await open_tcp(TransportLimits(idle_timeout_s=0.3, read_timeout_s=30))
    try:
        reader, writer = await connect(transport)
        writer.write(options("127.0.0.1:5999"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await closed_by_server(reader) == b""
        assert 0.25 < loop.time() - started < 1.5
        assert transport.counters()["tcp_closed_idle"] == 1
        assert transport.open_connections == 0
    finally:
        await transport.close()


async def test_keepalives_keep_a_connection_from_going_idle() -> None:
    transport, _ = await open_tcp(TransportLimits(idle_timeout_s=0.4, read_timeout_s=30))
    try:
        reader, writer = await connect(transport)
        for _ in range(5):  # 0.75 s in all, pinging every 0.15 s
            writer.write(b"\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\r\n"
            await asyncio.sleep(0.15)
        assert transport.open_connections == 1
        writer.close()
    finally:
        await transport.close()


async def test_connections_beyond_the_limit_are_refused() -> None:
    transport, sink = await open_tcp(TransportLimits(max_connections=2))
    try:
        first = await connect(transport)
        second = await connect(transport)
        for _, writer in (first, second):
            writer.write(options("127.0.0.1:5999"))
            await sink.frame()
        third_reader, third_writer = await connect(transport)
        assert await closed_by_server(third_reader) == b""
        assert transport.counters()["tcp_refused"] == 1
        first[1].write(b"\r\n\r\n")  # the first two still work
        assert await asyncio.wait_for(first[0].readexactly(2), TIMEOUT) == b"\r\n"
        # A slot freed is a slot available again.
        first[1].close()
        await asyncio.sleep(0.05)
        _fourth_reader, fourth_writer = await connect(transport)
        fourth_writer.write(options("127.0.0.1:5999"))
        await sink.frame()
        for writer in (second[1], third_writer, fourth_writer):
            writer.close()
    finally:
        await transport.close()


async def test_slow_sender_is_cut_after_the_read_timeout() -> None:
    transport, sink = await open_tcp(TransportLimits(read_timeout_s=0.3, idle_timeout_s=30))
    try:
        reader, writer = await connect(transport)
        message = options("127.0.0.1:5999")
        writer.write(message[:40])  # and never the rest
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await closed_by_server(reader) == b""
        assert 0.25 < loop.time() - started < 1.5
        assert transport.counters()["tcp_closed_slow"] == 1
        assert sink.frames.empty()
    finally:
        await transport.close()


async def test_silent_accepted_connection_is_cut_after_the_read_timeout() -> None:
    transport, _ = await open_tcp(TransportLimits(read_timeout_s=0.3, idle_timeout_s=30))
    try:
        reader, _ = await connect(transport)
        assert await closed_by_server(reader) == b""
        assert transport.counters()["tcp_closed_slow"] == 1
    finally:
        await transport.close()


async def test_steady_messages_are_not_taken_for_a_slow_sender() -> None:
    transport, sink = await open_tcp(TransportLimits(read_timeout_s=0.3, idle_timeout_s=30))
    try:
        _reader, writer = await connect(transport)
        for n in range(6):  # 0.6 s of traffic, each message complete
            writer.write(options("127.0.0.1:5999", branch=f"z9hG4bK-{n}"))
            await sink.frame()
            await asyncio.sleep(0.1)
        assert transport.open_connections == 1
        writer.close()
    finally:
        await transport.close()


async def test_oversized_message_is_rejected_and_the_connection_closed() -> None:
    transport, sink = await open_tcp(TransportLimits(max_message_size=2000))
    try:
        reader, writer = await connect(transport)
        writer.write(options("127.0.0.1:5999", body=b"x" * 3000))
        assert await closed_by_server(reader) == b""
        ((error, _peer),) = sink.rejected
        assert (error.status, error.reason) == (513, "Message Too Large")
        assert error.message is not None  # so the endpoint can answer it
        assert transport.counters()["tcp_closed_framing"] == 1
    finally:
        await transport.close()


async def test_peer_that_does_not_read_is_dropped() -> None:
    transport, sink = await open_tcp(TransportLimits(max_write_buffer=64 * 1024))
    try:
        _reader, writer = await connect(transport)
        writer.write(options("127.0.0.1:5999"))
        _, peer = await sink.frame()
        chunk = b"x" * 65000

        def flood() -> None:
            for _ in range(2000):  # at most 130 MB: kernel buffers fill long before
                transport.send(chunk, peer.reply_to)

        with pytest.raises(TransportError, match="does not read"):
            flood()
        assert transport.counters()["tcp_closed_write_overflow"] == 1
        writer.close()
    finally:
        await transport.close()


async def test_connection_ids_carry_the_worker_base() -> None:
    transport, sink = await open_tcp(base=3 << 32)
    try:
        _, writer = await connect(transport)
        writer.write(options("127.0.0.1:5999"))
        _, peer = await sink.frame()
        assert peer.connection_id is not None
        assert peer.connection_id >> 32 == 3
        writer.close()
    finally:
        await transport.close()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback (::1) here")
async def test_ipv6_connection() -> None:
    transport, sink = await open_tcp(listen="tcp:[::1]:0")
    try:
        reader, writer = await connect(transport)
        writer.write(options("[::1]:5999"))
        _, peer = await sink.frame()
        assert (peer.host, peer.local_host) == ("::1", "::1")
        transport.send(b"SIP/2.0 200 OK\r\n\r\n", Destination("tcp", "[::1]", peer.port))
        assert await asyncio.wait_for(reader.readexactly(18), TIMEOUT) == b"SIP/2.0 200 OK\r\n\r\n"
        writer.close()
    finally:
        await transport.close()
