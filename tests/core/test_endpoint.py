"""SipEndpoint over real sockets: parsed delivery, answers to bad requests, counters."""

from __future__ import annotations

import asyncio

import pytest

from sipfleet.logcontext import CALL_ID
from sipfleet.sip import Request, Response, parse_message, validate_request
from sipfleet.transport import Destination, Peer, TransportError, TransportLimits
from tests.transport.helpers import (
    TIMEOUT,
    Recorder,
    UdpClient,
    address_of,
    ipv6_available,
    options,
    running_endpoint,
)

UDP = "udp:127.0.0.1:0"
TCP = "tcp:127.0.0.1:0"


@pytest.fixture
def client() -> UdpClient:
    return UdpClient()


async def test_request_and_response_reach_the_handler(client) -> None:
    async with running_endpoint(UDP) as (endpoint, recorder):
        client.send(options("127.0.0.1:5999"), address_of(endpoint, "udp"))
        request, peer = await recorder.request()
        assert isinstance(request, Request)
        assert (request.method, request.call_id) == ("OPTIONS", "call-1@test")
        assert peer == Peer("udp", "127.0.0.1", client.port, *address_of(endpoint, "udp"))
        client.send(
            b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
            address_of(endpoint, "udp"),
        )
        response, _ = await recorder.response()
        assert isinstance(response, Response)
        assert response.status == 180
        assert endpoint.counters()["requests_received"] == 1
        assert endpoint.counters()["responses_received"] == 1


async def test_handler_answers_through_the_endpoint(client) -> None:
    async with running_endpoint(UDP) as (endpoint, recorder):
        client.send(options("127.0.0.1:5999"), address_of(endpoint, "udp"))
        request, peer = await recorder.request()
        endpoint.reply(request, 200, None, peer)
        answer = await client.recv_message()
        assert isinstance(answer, Response)
        assert answer.status == 200
        assert answer.call_id == "call-1@test"
        assert endpoint.counters()["messages_sent"] == 1


BAD_REQUESTS = [
    pytest.param(
        options("127.0.0.1:5999", extra="This line has no colon"),
        400,
        "Header line without a colon",
        id="header-without-colon",
    ),
    pytest.param(
        options("127.0.0.1:5999").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),
        505,
        "Version Not Supported",
        id="sip-version",
    ),
    pytest.param(
        options("127.0.0.1:5999", body=b"x" * 3000),
        513,
        "Message Too Large",
        id="oversized",
    ),
    pytest.param(
        options("127.0.0.1:5999", extra="Content-Length: 900"),
        400,
        "Content-Length",
        id="content-length-beyond-the-datagram",
    ),
]


@pytest.mark.parametrize(("data", "status", "reason"), BAD_REQUESTS)
async def test_bad_request_is_answered_with_status_and_reason(client, data, status, reason) -> None:
    limits = TransportLimits(max_message_size=2000)
    async with running_endpoint(UDP, limits=limits) as (endpoint, recorder):
        client.send(data, address_of(endpoint, "udp"))
        answer = await client.recv_message()
        assert isinstance(answer, Response)
        assert answer.status == status
        assert reason in answer.reason
        assert answer.call_id == "call-1@test"  # the UA can match it to its request
        assert answer.top_via.branch == "z9hG4bK-test-1"
        assert recorder.requests.empty()
        assert endpoint.counters()["requests_rejected"] == 1


async def test_broken_ack_is_not_answered(client) -> None:
    async with running_endpoint(UDP) as (endpoint, _recorder):
        data = options("127.0.0.1:5999", method="ACK", extra="Broken header")
        client.send(data, address_of(endpoint, "udp"))
        await client.nothing()
        assert endpoint.counters()["requests_dropped"] == 1


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: x\r\n\r\n",
        b"SIP/2.0 2000 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nNo colon here\r\n\r\n",
    ],
    ids=["bad-content-length", "bad-status-code", "bad-header"],
)
async def test_broken_response_is_dropped_and_counted(client, data) -> None:
    async with running_endpoint(UDP) as (endpoint, recorder):
        client.send(data, address_of(endpoint, "udp"))
        client.send(options("127.0.0.1:5999"), address_of(endpoint, "udp"))
        await recorder.request()  # the socket goes on serving
        assert recorder.responses.empty()
        assert endpoint.counters()["responses_dropped"] == 1
        await client.nothing(0.1)


async def test_bytes_that_are_not_sip_are_dropped_and_counted(client) -> None:
    async with running_endpoint(UDP) as (endpoint, recorder):
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", address_of(endpoint, "udp"))
        client.send(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 3, address_of(endpoint, "udp")
        )
        client.send(options("127.0.0.1:5999"), address_of(endpoint, "udp"))
        await recorder.request()
        counters = endpoint.counters()
        assert counters["garbage_dropped"] + counters["requests_rejected"] == 2
        assert counters["garbage_dropped"] >= 1


async def test_leading_crlf_before_a_request_is_skipped(client) -> None:
    async with running_endpoint(UDP) as (endpoint, recorder):
        client.send(b"\r\n" + options("127.0.0.1:5999"), address_of(endpoint, "udp"))
        request, _ = await recorder.request()
        assert request.method == "OPTIONS"


class Validating(Recorder):
    """A role that checks requests the way roles do and has a bug on INFO."""

    def on_request(self, request: Request, peer: Peer) -> None:
        if request.method == "INFO":
            raise RuntimeError("role bug")
        validate_request(request)
        super().on_request(request, peer)


async def test_parse_error_escaping_the_handler_is_answered(client) -> None:
    async with running_endpoint(UDP, handler=Validating()) as (endpoint, _):
        data = options("127.0.0.1:5999").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
        client.send(data, address_of(endpoint, "udp"))
        answer = await client.recv_message()
        assert isinstance(answer, Response)
        assert (answer.status, answer.reason) == (
            400,
            "CSeq method does not match the Request-Line",
        )


async def test_handler_bug_is_counted_and_the_endpoint_goes_on(client) -> None:
    handler = Validating()
    async with running_endpoint(UDP, handler=handler) as (endpoint, _):
        client.send(options("127.0.0.1:5999", method="INFO"), address_of(endpoint, "udp"))
        client.send(options("127.0.0.1:5999"), address_of(endpoint, "udp"))
        request, _ = await handler.request()
        assert request.method == "OPTIONS"
        assert endpoint.counters()["handler_errors"] == 1


# -- TCP -------------------------------------------------------------------------------------
async def test_tcp_bad_message_is_answered_on_its_connection_which_stays_open() -> None:
    async with running_endpoint(TCP) as (endpoint, recorder):
        reader, writer = await asyncio.open_connection(*address_of(endpoint, "tcp"))
        writer.write(options("127.0.0.1:5999", extra="No colon"))
        answer = parse_message(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT))
        assert isinstance(answer, Response)
        assert answer.status == 400
        writer.write(options("127.0.0.1:5999"))
        _request, peer = await recorder.request()
        assert peer.transport == "tcp"
        writer.close()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (options("127.0.0.1:5999", body=b"x" * 3000), 513),
        (options("127.0.0.1:5999").replace(b"Content-Length: 0\r\n", b""), 400),
    ],
    ids=["oversized", "no-content-length"],
)
async def test_tcp_unframeable_request_is_answered_then_closed(data, status) -> None:
    limits = TransportLimits(max_message_size=2000)
    async with running_endpoint(TCP, limits=limits) as (endpoint, recorder):
        reader, writer = await asyncio.open_connection(*address_of(endpoint, "tcp"))
        writer.write(data)
        everything = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the close
        answer = parse_message(everything)
        assert isinstance(answer, Response)
        assert answer.status == status
        assert answer.call_id == "call-1@test"
        assert recorder.requests.empty()


async def test_tcp_request_out_and_response_back_on_the_same_connection() -> None:
    async with (
        running_endpoint(TCP) as (server, server_recorder),
        running_endpoint(TCP) as (
            client,
            client_recorder,
        ),
    ):
        host, port = address_of(server, "tcp")
        client.send_bytes(options("127.0.0.1:5999"), Destination("tcp", host, port))
        request, peer = await server_recorder.request()
        server.reply(request, 200, None, peer)
        response, back = await client_recorder.response()
        assert response.status == 200
        assert (back.host, back.port) == (host, port)
        assert client.tcp.open_connections == server.tcp.open_connections == 1


async def test_failed_send_reaches_on_send_error() -> None:
    failures: list[Destination] = []
    async with running_endpoint(TCP) as (probe, _):
        host, port = address_of(probe, "tcp")
    async with running_endpoint(UDP) as (endpoint, _):
        endpoint.on_send_error = lambda destination, error: failures.append(destination)
        endpoint.send_bytes(b"OPTIONS", Destination("tcp", host, port))
        for _ in range(100):
            if failures:
                break
            await asyncio.sleep(0.02)
        assert failures == [Destination("tcp", host, port)]
        assert endpoint.counters()["send_errors"] == 1


async def test_unsupported_transport_is_refused_at_once() -> None:
    async with running_endpoint(UDP) as (endpoint, _):
        with pytest.raises(TransportError, match="unsupported transport"):
            endpoint.send_bytes(b"x", Destination("sctp", "127.0.0.1", 5060))  # type: ignore[arg-type]


async def test_local_address_and_sent_by() -> None:
    listen = [UDP, TCP] + (["udp:[::1]:0"] if ipv6_available() else [])
    async with running_endpoint(*listen) as (endpoint, _):
        udp_host, udp_port = endpoint.local_address("udp")
        assert (udp_host, endpoint.sent_by("udp")) == ("127.0.0.1", f"127.0.0.1:{udp_port}")
        assert endpoint.local_address("tcp", "127.0.0.9")[0] == "127.0.0.1"
        if ipv6_available():
            v6_port = endpoint.local_address("udp", "::1")[1]
            assert endpoint.sent_by("udp", "2001:db8::1") == f"[::1]:{v6_port}"
        with pytest.raises(TransportError):
            endpoint.local_address("tcp", "::1")


async def test_start_without_a_handler_is_refused() -> None:
    from sipfleet.config.listen import parse_listen
    from sipfleet.core.endpoint import SipEndpoint

    with pytest.raises(RuntimeError, match="handler"):
        await SipEndpoint([parse_listen(UDP)]).start()


class CallIdRecorder(Recorder):
    """Notes which call the log context names while it handles a message, and after."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str | None] = []

    def on_request(self, request: Request, peer: Peer) -> None:
        self.seen.append(CALL_ID.get())
        super().on_request(request, peer)


async def test_the_handlers_log_lines_name_the_call(client: UdpClient) -> None:
    handler = CallIdRecorder()
    async with running_endpoint(UDP, handler=handler) as (endpoint, _):
        client.send(options("127.0.0.1:5999"), address_of(endpoint, "udp"))
        await handler.request()
        assert handler.seen == ["call-1@test"]
        assert CALL_ID.get() is None  # reset once the handler returned
