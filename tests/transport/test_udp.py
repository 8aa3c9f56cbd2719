"""UDP listeners over real sockets: delivery, sending, keep-alives, STUN, buffers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipfleet.config.listen import parse_listen
from sipfleet.transport import Destination, MessageTooLarge, TransportError, bind_all, stun
from sipfleet.transport.base import Peer
from sipfleet.transport.sockets import listen_address_of
from sipfleet.transport.udp import MAX_PEERS, UdpTransport, _UdpSocket
from tests.transport.helpers import UdpClient, ipv6_available, options
from tests.transport.sinks import RecordingSink

needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback (::1) here")


async def open_udp(*listen: str) -> tuple[UdpTransport, RecordingSink]:
    sink = RecordingSink()
    transport = UdpTransport(sink)
    await transport.start(bind_all([parse_listen(text) for text in listen]))
    return transport, sink


@pytest.fixture
async def udp() -> AsyncIterator[tuple[UdpTransport, RecordingSink]]:
    transport, sink = await open_udp("udp:127.0.0.1:0")
    yield transport, sink
    await transport.close()


@pytest.fixture
def client() -> UdpClient:
    return UdpClient()


async def test_datagram_reaches_the_sink_with_the_peer(udp, client) -> None:
    transport, sink = udp
    local = transport.addresses[0]
    client.send(options("127.0.0.1:5999"), local)
    data, peer = await sink.frame()
    assert data == options("127.0.0.1:5999")
    assert (peer.transport, peer.host, peer.port) == ("udp", "127.0.0.1", client.port)
    assert (peer.local_host, peer.local_port) == local
    assert peer.connection_id is None


async def test_send_goes_out_from_the_listening_port(udp, client) -> None:
    transport, _ = udp
    transport.send(b"SIP/2.0 200 OK\r\n\r\n", Destination("udp", "127.0.0.1", client.port))
    data, source = await client.recv()
    assert data == b"SIP/2.0 200 OK\r\n\r\n"
    assert source == transport.addresses[0]


async def test_reply_leaves_from_the_socket_the_request_came_in_on(client) -> None:
    transport, sink = await open_udp("udp:127.0.0.1:0", "udp:127.0.0.2:0")
    try:
        second = transport.addresses[1]
        client.send(options("127.0.0.1:5999"), second)
        _, peer = await sink.frame()
        transport.send(b"SIP/2.0 200 OK\r\n\r\n", peer.reply_to)
        _, source = await client.recv()
        assert source == second
    finally:
        await transport.close()


async def test_crlf_keepalive_is_dropped_and_counted(udp, client) -> None:
    transport, sink = udp
    client.send(b"\r\n\r\n", transport.addresses[0])
    client.send(options("127.0.0.1:5999"), transport.addresses[0])
    data, _ = await sink.frame()  # the request after it arrives, the keep-alive did not
    assert data.startswith(b"OPTIONS")
    assert transport.counters()["udp_keepalives"] == 1
    await client.nothing(0.1)  # RFC 5626 defines no answer to CRLF on UDP


async def test_stun_binding_request_is_answered_with_the_mapped_address(udp, client) -> None:
    transport, sink = udp
    client.send(stun.binding_request(b"0123456789ab"), transport.addresses[0])
    data, _ = await client.recv()
    assert data[8:20] == b"0123456789ab"  # same transaction
    assert stun.mapped_address(data) == ("127.0.0.1", client.port)
    assert transport.counters()["udp_stun_answered"] == 1
    assert sink.frames.empty()


async def test_malformed_stun_is_not_answered_but_left_to_the_parser(udp, client) -> None:
    transport, sink = udp
    bad = bytearray(stun.binding_request(b"0123456789ab"))
    bad[4] ^= 0xFF  # wrong magic cookie
    client.send(bytes(bad), transport.addresses[0])
    data, _ = await sink.frame()  # the endpoint's parser counts it as garbage
    assert data == bytes(bad)
    assert transport.counters()["udp_stun_answered"] == 0
    await client.nothing(0.1)


@needs_ipv6
async def test_ipv6_datagram_and_answer() -> None:
    transport, sink = await open_udp("udp:[::1]:0")
    client = UdpClient("::1")
    try:
        client.send(options("[::1]:5999"), transport.addresses[0])
        _, peer = await sink.frame()
        assert (peer.host, peer.port, peer.local_host) == ("::1", client.port, "::1")
        transport.send(b"SIP/2.0 200 OK\r\n\r\n", peer.reply_to)
        data, _ = await client.recv()
        assert data == b"SIP/2.0 200 OK\r\n\r\n"
    finally:
        client.close()
        await transport.close()


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("::1", "no UDP socket for IPv6"),  # only an IPv4 socket is open
        ("sip.example.invalid", "not an IP address"),  # never looked up on the loop
    ],
)
async def test_a_destination_it_cannot_send_to_is_a_transport_error(udp, host, error) -> None:
    transport, _ = udp
    with pytest.raises(TransportError, match=error):
        transport.send(b"x", Destination("udp", host, 5060))


async def test_a_failing_sink_does_not_close_the_socket(udp, client) -> None:
    transport, sink = udp
    sink.fail_next = True
    client.send(options("127.0.0.1:5999", branch="z9hG4bK-a"), transport.addresses[0])
    client.send(options("127.0.0.1:5999", branch="z9hG4bK-b"), transport.addresses[0])
    data, _ = await sink.frame()
    assert b"z9hG4bK-b" in data


async def test_a_datagram_too_large_for_the_network_is_told_apart(udp, client) -> None:
    transport, _ = udp
    to_client = Destination("udp", "127.0.0.1", client.port)
    with pytest.raises(MessageTooLarge, match="65508 bytes"):  # IPv4 takes 65507 at most
        transport.send(b"x" * 65508, to_client)
    transport.send(b"x" * 65507, to_client)  # the largest that goes
    data, _ = await client.recv()
    assert len(data) == 65507


class FullSocket(socket.socket):
    """A socket whose kernel send buffer is full (not reproducible on loopback, where
    a datagram leaves the sender's buffer as it is sent)."""

    refuse = True

    def sendto(self, data, address):  # type: ignore[no-untyped-def,override]
        if self.refuse:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().sendto(data, address)


async def test_a_datagram_the_kernel_has_no_room_for_is_dropped_and_counted(client) -> None:
    (bound,) = bind_all([parse_listen("udp:127.0.0.1:0")])
    sock = FullSocket(bound.family, bound.type, fileno=bound.detach())
    transport = UdpTransport(RecordingSink())
    await transport.start([sock])
    try:
        to_client = Destination("udp", "127.0.0.1", client.port)
        transport.send(b"SIP/2.0 200 lost\r\n\r\n", to_client)  # no exception: lost
        assert transport.counters()["udp_send_dropped"] == 1
        sock.refuse = False  # room again
        transport.send(b"SIP/2.0 200 sent\r\n\r\n", to_client)
        data, _ = await client.recv()
        assert data == b"SIP/2.0 200 sent\r\n\r\n"
        assert transport.counters()["udp_send_dropped"] == 1
    finally:
        await transport.close()


async def test_send_on_a_lost_or_closed_socket_is_a_transport_error(udp, client) -> None:
    transport, _ = udp
    local = transport.addresses[0]
    to_client = Destination("udp", "127.0.0.1", client.port, None, local)
    transport._listeners[0].connection_lost(OSError("fatal read error"))  # asyncio gave up on it
    with pytest.raises(TransportError, match="UDP socket closed"):
        transport.send(b"x", to_client)
    await transport.close()
    with pytest.raises(TransportError, match="no UDP socket"):
        transport.send(b"x", to_client)


def test_udp_sockets_ask_for_large_buffers() -> None:
    (sock,) = bind_all([parse_listen("udp:127.0.0.1:0")])
    with sock:
        cap = int(Path("/proc/sys/net/core/rmem_max").read_text())
        # Linux reports twice the size asked for, capped at rmem_max.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(4 << 20, cap)


def test_udp_and_tcp_on_port_zero_share_one_port() -> None:
    sockets = bind_all([parse_listen("udp:127.0.0.1:0"), parse_listen("tcp:127.0.0.1:0")])
    try:
        udp_address, tcp_address = (listen_address_of(sock) for sock in sockets)
        assert (udp_address.transport, tcp_address.transport) == ("udp", "tcp")
        assert udp_address.port == tcp_address.port != 0
    finally:
        for sock in sockets:
            sock.close()


async def test_close_releases_the_port() -> None:
    transport, _ = await open_udp("udp:127.0.0.1:0")
    host, port = transport.addresses[0]
    await transport.close()
    await asyncio.sleep(0.01)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))  # would raise if the listener still held it


class EchoSink(RecordingSink):
    """Answers every frame at once, the way a handler does."""

    transport: UdpTransport

    def frame_received(self, data: bytes, peer) -> None:  # type: ignore[no-untyped-def]
        self.transport.send(b"SIP/2.0 200 OK\r\n\r\n", peer.reply_to)


async def test_datagrams_queued_before_start_are_answered(client) -> None:
    sockets = bind_all([parse_listen("udp:127.0.0.1:0"), parse_listen("udp:127.0.0.2:0")])
    for sock in sockets:  # a restarted worker finds these waiting in its sockets
        client.send(options("127.0.0.1:5999"), sock.getsockname())
    sink = EchoSink()
    sink.transport = transport = UdpTransport(sink)
    await transport.start(sockets)
    try:
        sources = {(await client.recv())[1] for _ in sockets}
        assert sources == set(transport.addresses)
    finally:
        await transport.close()


async def test_the_peer_of_a_source_is_kept_and_each_source_has_its_own(udp) -> None:
    transport, sink = udp
    local = transport.addresses[0]
    first, second = UdpClient(), UdpClient()
    first.send(options("127.0.0.1:5999"), local)
    _, peer = await sink.frame()
    first.send(options("127.0.0.1:5999"), local)
    _, again = await sink.frame()
    second.send(options("127.0.0.1:5999"), local)
    _, other = await sink.frame()
    assert again is peer  # kept: the same Peer, not a new one
    assert (peer.host, peer.port) == ("127.0.0.1", first.port)
    assert (other.host, other.port) == ("127.0.0.1", second.port)
    assert other.local_port == peer.local_port == local[1]


def test_the_kept_peers_are_bounded_and_each_as_made() -> None:
    delivered: list[Peer] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp_socket = _UdpSocket("127.0.0.1", 5060, lambda data, peer: delivered.append(peer), sock)
        for port in range(1, MAX_PEERS + 10):
            udp_socket.received(b"OPTIONS", ("127.0.0.2", port))
        assert len(udp_socket.peers) <= MAX_PEERS
        assert delivered == [
            Peer("udp", "127.0.0.2", port, "127.0.0.1", 5060) for port in range(1, MAX_PEERS + 10)
        ]
    finally:
        sock.close()
