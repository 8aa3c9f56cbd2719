"""SIP over WebSocket (RFC 7118) on real sockets, with a real WebSocket client
(the ``websockets`` library): the handshake, messages both ways, keep-alives, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.typing import Subprotocol

from sipfleet.config.listen import parse_listen
from sipfleet.transport import Destination, TransportError, TransportLimits, bind_all
from sipfleet.transport.tcp import PING, TcpTransport
from sipfleet.transport.tls import TlsCertificates
from tests.transport.helpers import TIMEOUT, options
from tests.transport.sinks import RecordingSink
from tests.transport.test_tls import self_signed, trusting_nothing

SIP = [Subprotocol("sip")]


@pytest.fixture
async def ws() -> AsyncIterator[tuple[TcpTransport, RecordingSink]]:
    sink = RecordingSink()
    transport = TcpTransport(sink, TransportLimits(read_timeout_s=5, max_message_size=4096))
    await transport.start([], ws_sockets=bind_all([parse_listen("ws:127.0.0.1:0")]))
    yield transport, sink
    await transport.close()


def url(transport: TcpTransport, scheme: str = "ws") -> str:
    host, port = transport.addresses[0]
    return f"{scheme}://{host}:{port}/"


def client(transport: TcpTransport, **options: Any) -> connect:
    options = {"subprotocols": SIP, "proxy": None, "ping_interval": None, **options}
    return connect(url(transport), open_timeout=TIMEOUT, **options)


async def received(connection: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(connection.recv(), TIMEOUT)


async def test_one_sip_message_per_websocket_message_both_ways(ws) -> None:
    transport, sink = ws
    async with client(transport) as connection:
        assert connection.subprotocol == "sip"  # RFC 7118 §4.1: the answer selects it
        message = options("127.0.0.1:5999")
        await connection.send(message.decode())  # text, no framing of its own
        data, peer = await sink.frame()
        assert data == message
        assert peer.transport == "ws"
        await connection.send(message)  # binary is a SIP message too (§5.1)
        assert (await sink.frame())[0] == message
        answer = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        transport.send(answer, peer.reply_to)
        assert await received(connection) == answer.decode()  # one text message
    assert transport.counters()["ws_accepted"] == 1


async def test_a_message_sent_in_fragments_arrives_whole(ws) -> None:
    transport, sink = ws
    message = options("127.0.0.1:5999").decode()
    async with client(transport) as connection:
        await connection.send([message[:40], message[40:90], message[90:]])
        assert (await sink.frame())[0] == message.encode()


async def test_a_handshake_without_the_sip_subprotocol_is_refused_saying_why(ws) -> None:
    transport, _ = ws
    for subprotocols in ([Subprotocol("chat")], None):
        with pytest.raises(InvalidStatus) as refused:
            async with client(transport, subprotocols=subprotocols):
                pass
        assert refused.value.response.status_code == 400
        assert b"Sec-WebSocket-Protocol must offer 'sip'" in refused.value.response.body
    assert transport.counters()["ws_refused"] == 2
    assert transport.open_connections == 0


async def test_plain_http_is_answered_400_and_closed(ws) -> None:
    transport, _ = ws
    reader, writer = await asyncio.open_connection(*transport.addresses[0])
    writer.write(b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n")  # SIP, not a WebSocket
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"not a WebSocket handshake" in answer
    writer.close()


async def test_keepalives_crlf_and_websocket_ping_are_answered(ws) -> None:
    transport, _ = ws
    async with client(transport) as connection:
        await connection.send("\r\n\r\n")  # RFC 5626 ping as SIP.js sends it
        assert await received(connection) == "\r\n"
        pong = await connection.ping(b"are you there")
        await asyncio.wait_for(pong, TIMEOUT)  # the Pong came back with that payload


async def test_our_keepalive_is_a_websocket_ping_the_client_answers(ws) -> None:
    transport, sink = ws
    async with client(transport) as connection:
        await connection.send(options("127.0.0.1:5999").decode())
        _, peer = await sink.frame()
        transport.send(PING, peer.reply_to)  # what the LB's keepalives send on a flow
        async with asyncio.timeout(TIMEOUT):  # the client's library answers by itself
            while transport.counters()["tcp_pongs"] == 0:
                await asyncio.sleep(0.01)


async def test_a_message_over_the_size_limit_closes_with_1009(ws) -> None:
    transport, _ = ws
    async with client(transport) as connection:
        await connection.send("x" * 5000)
        with pytest.raises(ConnectionClosedError) as closed:
            await received(connection)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_a_websocket_client_is_never_connected_to(ws) -> None:
    transport, _ = ws
    with pytest.raises(TransportError, match="WS connections are accepted, never opened"):
        transport.send(b"x", Destination("ws", "127.0.0.1", 9))


async def test_closing_says_goodbye_with_a_websocket_close(ws) -> None:
    transport, sink = ws
    async with client(transport) as connection:
        await connection.send(options("127.0.0.1:5999").decode())
        _, peer = await sink.frame()
        assert peer.connection_id is not None
        found = transport.connection(peer.connection_id)
        assert found is not None
        found.close()  # as the LB does when a flow's last registration ends
        await asyncio.wait_for(connection.wait_closed(), TIMEOUT)
        assert connection.close_code == 1000


async def test_wss_uses_the_tls_certificate(tmp_path: Path) -> None:
    sink = RecordingSink()
    transport = TcpTransport(sink, TransportLimits(read_timeout_s=5))
    certificates = TlsCertificates(*self_signed(tmp_path))
    sockets = bind_all([parse_listen("wss:127.0.0.1:0")])
    await transport.start([], certificates=certificates, wss_sockets=sockets)
    try:
        async with connect(
            url(transport, "wss"), subprotocols=SIP, proxy=None, ssl=trusting_nothing()
        ) as connection:
            await connection.send(options("127.0.0.1:5999").decode())
            _, peer = await sink.frame()
            assert peer.transport == "wss"
            transport.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", peer.reply_to)
            assert str(await received(connection)).startswith("SIP/2.0 200 OK")
    finally:
        await transport.close()


async def test_wss_needs_a_certificate() -> None:
    transport = TcpTransport(RecordingSink())
    sockets = bind_all([parse_listen("wss:127.0.0.1:0")])
    with pytest.raises(ValueError, match="need a certificate"):
        await transport.start([], wss_sockets=sockets)
    for sock in sockets:
        sock.close()
