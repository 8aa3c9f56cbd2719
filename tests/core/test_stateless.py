"""Stateless forwarding through a relay between real sockets (RFC 3261 §16.11, RFC 3581)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from sipfleet.config.listen import parse_listen
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.stateless import StatelessForwarder, StatelessRelay, flow_of
from sipfleet.sip import ParseError, Request, Response, parse_message
from sipfleet.transport import Destination, Peer
from tests.transport.helpers import TIMEOUT, UdpClient, answer, ipv6_available, options


@dataclass
class Setup:
    endpoint: SipEndpoint
    forwarder: StatelessForwarder
    uac: UdpClient
    uas: UdpClient

    def address(self, transport: str = "udp", index: int = 0) -> tuple[str, int]:
        found = [(a.host, a.port) for a in self.endpoint.addresses if a.transport == transport]
        return found[index]

    @property
    def sent_by(self) -> str:
        return self.endpoint.sent_by("udp", self.uas.host)

    async def forwarded(self) -> Request:
        """What the UAS receives."""
        message = await self.uas.recv_message()
        assert isinstance(message, Request)
        return message

    async def answered(self, request: Request, status: int = 200) -> Response:
        """The UAS answers ``request``; returns what reaches the UAC."""
        self.uas.send(answer(request.serialize(), status), self.address())
        message = await self.uac.recv_message()
        assert isinstance(message, Response)
        return message


@asynccontextmanager
async def relay(*listen: str, host: str = "127.0.0.1", **options: bool) -> AsyncIterator[Setup]:
    uac, uas = UdpClient(host), UdpClient(host)
    endpoint = SipEndpoint([parse_listen(text) for text in listen])
    forwarder = StatelessForwarder(endpoint, **options)
    endpoint.handler = StatelessRelay(forwarder, Destination("udp", uas.host, uas.port))
    try:
        async with endpoint:
            yield Setup(endpoint, forwarder, uac, uas)
    finally:
        uac.close()
        uas.close()


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    async with relay("udp:127.0.0.1:0", "tcp:127.0.0.1:0") as made:
        yield made


async def test_request_gets_our_via_and_one_hop_less(setup: Setup) -> None:
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}"), setup.address())
    request = await setup.forwarded()
    ours, theirs = request.vias
    assert (ours.transport, f"{ours.host}:{ours.port}") == ("UDP", setup.sent_by)
    assert ours.is_rfc3261
    assert str(theirs) == f"SIP/2.0/UDP 127.0.0.1:{setup.uac.port};branch=z9hG4bK-test-1"
    assert theirs.received is None  # sent-by is the source address: nothing to stamp
    assert request.max_forwards == 69
    assert setup.forwarder.stats.requests_forwarded == 1


async def test_response_loses_our_via_and_reaches_the_client(setup: Setup) -> None:
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}"), setup.address())
    response = await setup.answered(await setup.forwarded())
    assert response.status == 200
    assert [str(v) for v in response.vias] == [
        f"SIP/2.0/UDP 127.0.0.1:{setup.uac.port};branch=z9hG4bK-test-1"
    ]
    assert setup.forwarder.stats.responses_forwarded == 1


async def test_rport_and_received_are_stamped_and_used(setup: Setup) -> None:
    # The client believes it is 192.0.2.10:5060 (a NAT rewrote it) and asks for rport.
    setup.uac.send(options("192.0.2.10:5060;rport"), setup.address())
    request = await setup.forwarded()
    theirs = request.vias[1]
    assert theirs.params["rport"] == str(setup.uac.port)
    assert theirs.received == "127.0.0.1"
    response = await setup.answered(request)  # arrives at the real source address
    assert response.top_via.rport == setup.uac.port


async def test_received_without_rport_goes_to_the_sent_by_port(setup: Setup) -> None:
    setup.uac.send(options(f"192.0.2.10:{setup.uac.port}"), setup.address())
    request = await setup.forwarded()
    theirs = request.vias[1]
    assert theirs.received == "127.0.0.1"
    assert not theirs.has_rport
    response = await setup.answered(request)
    assert response.top_via.received == "127.0.0.1"


async def test_force_rport_answers_clients_that_did_not_ask() -> None:
    async with relay("udp:127.0.0.1:0", force_rport=True) as setup:
        setup.uac.send(options("192.0.2.10:5060"), setup.address())
        request = await setup.forwarded()
        assert request.vias[1].rport == setup.uac.port
        await setup.answered(request)


async def test_max_forwards_zero_is_answered_483_and_not_forwarded(setup: Setup) -> None:
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}", max_forwards=0), setup.address())
    response = await setup.uac.recv_message()
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (483, "Too Many Hops")
    await setup.uas.nothing()
    assert setup.forwarder.stats.too_many_hops == 1


async def test_max_forwards_one_is_forwarded_as_zero(setup: Setup) -> None:
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}", max_forwards=1), setup.address())
    assert (await setup.forwarded()).max_forwards == 0


async def test_missing_max_forwards_is_added(setup: Setup) -> None:
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}", max_forwards=None), setup.address())
    assert (await setup.forwarded()).max_forwards == 70


async def test_ack_at_zero_hops_is_dropped_silently(setup: Setup) -> None:
    data = options(f"127.0.0.1:{setup.uac.port}", max_forwards=0, method="ACK")
    setup.uac.send(data, setup.address())
    await setup.uac.nothing()
    await setup.uas.nothing(0.05)


async def test_bad_max_forwards_is_answered_400(setup: Setup) -> None:
    data = options(f"127.0.0.1:{setup.uac.port}", max_forwards=None, extra="Max-Forwards: many")
    setup.uac.send(data, setup.address())
    response = await setup.uac.recv_message()
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (400, "Bad Max-Forwards header")


def fits_until_forwarded(via: str, method: str = "OPTIONS") -> bytes:
    """A request that fits in one datagram (65507 bytes over IPv4) but not once a hop
    has added its Via."""
    empty = options(via, method=method, body=b"x" * 10000)  # as many digits as the real one
    return options(via, method=method, body=b"x" * (10000 + 65490 - len(empty)))


async def test_request_too_large_once_forwarded_is_answered_513(setup: Setup) -> None:
    data = fits_until_forwarded(f"127.0.0.1:{setup.uac.port}")
    assert len(data) == 65490
    setup.uac.send(data, setup.address())
    response = await setup.uac.recv_message()
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (513, "Message Too Large")
    assert [str(v) for v in response.vias] == [  # ours is not in it
        f"SIP/2.0/UDP 127.0.0.1:{setup.uac.port};branch=z9hG4bK-test-1"
    ]
    await setup.uas.nothing(0.05)
    assert setup.forwarder.stats.too_large == 1
    assert setup.forwarder.stats.requests_forwarded == 0


async def test_ack_too_large_once_forwarded_is_dropped_silently(setup: Setup) -> None:
    data = fits_until_forwarded(f"127.0.0.1:{setup.uac.port}", method="ACK")
    setup.uac.send(data, setup.address())
    await setup.uac.nothing()
    assert setup.forwarder.stats.too_large == 1


async def test_retransmission_keeps_its_branch_a_new_request_does_not(setup: Setup) -> None:
    first = options(f"127.0.0.1:{setup.uac.port}", branch="z9hG4bK-one")
    setup.uac.send(first, setup.address())
    setup.uac.send(first, setup.address())
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}", branch="z9hG4bK-two"), setup.address())
    branches = [(await setup.forwarded()).top_via.branch for _ in range(3)]
    assert branches[0] == branches[1] != branches[2]


async def test_response_whose_top_via_is_not_ours_is_dropped(setup: Setup) -> None:
    stray = answer(options(f"127.0.0.1:{setup.uac.port}"))  # only the client's Via
    setup.uas.send(stray, setup.address())
    await setup.uac.nothing()
    assert setup.forwarder.stats.responses_not_ours == 1


async def test_tcp_client_gets_its_response_on_its_connection(setup: Setup) -> None:
    reader, writer = await asyncio.open_connection(*setup.address("tcp"))
    # The sent-by port is made up: only the connection leads back to the client.
    writer.write(options("127.0.0.1:1", transport="TCP"))
    request = await setup.forwarded()
    assert request.top_via.params["sfi"].startswith("t")
    setup.uas.send(answer(request.serialize()), setup.address())
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    response = parse_message(data)
    assert isinstance(response, Response)
    assert response.status == 200
    assert len(response.vias) == 1
    writer.close()


async def test_response_leaves_from_the_socket_the_request_came_in_on() -> None:
    async with relay("udp:127.0.0.1:0", "udp:127.0.0.2:0") as setup:
        second = setup.address("udp", 1)
        setup.uac.send(options(f"127.0.0.1:{setup.uac.port}"), second)
        request = await setup.forwarded()
        assert request.top_via.params["sfi"] == "u1"
        setup.uas.send(answer(request.serialize()), setup.address("udp", 0))
        _, source = await setup.uac.recv()
        assert source == second


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback (::1) here")
async def test_ipv6_request_and_response() -> None:
    async with relay("udp:[::1]:0", host="::1") as setup:
        setup.uac.send(options(f"[::1]:{setup.uac.port}"), setup.address())
        request = await setup.forwarded()
        assert request.top_via.host == "[::1]"
        response = await setup.answered(request)
        assert response.status == 200
        assert len(response.vias) == 1


async def test_response_with_only_our_via_is_dropped(setup: Setup) -> None:
    ours = f"SIP/2.0/UDP {setup.sent_by};branch=z9hG4bK-sf-probe"
    data = (
        f"SIP/2.0 200 OK\r\nVia: {ours}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n"
        "Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    setup.uas.send(data, setup.address())
    await setup.uac.nothing()
    assert setup.forwarder.stats.responses_unroutable == 1


async def test_our_via_can_name_another_side_and_carry_parameters(setup: Setup) -> None:
    """A node with a public and an internal side names the side the request leaves from;
    extra Via parameters come back in the response (the LB keeps its flow token there)."""

    target = Destination("udp", setup.uas.host, setup.uas.port)

    class Named:  # the relay's handler, forwarding with a sent-by and parameters of its own
        def on_request(self, request: Request, peer: Peer) -> None:
            setup.forwarder.forward_request(
                request, peer, target, sent_by="192.0.2.99:5099", via_params=";ft=abc"
            )

        def on_response(self, response: Response, peer: Peer) -> None:
            setup.forwarder.forward_response(response, peer)

    setup.endpoint.handler = Named()
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}"), setup.address())
    request = await setup.forwarded()
    ours = request.vias[0]
    assert (ours.host, ours.port, ours.params.get("ft")) == ("192.0.2.99", 5099, "abc")


async def test_our_via_written_another_way_by_the_next_hop_is_still_ours(setup: Setup) -> None:
    """Our Via is recognised by its text as we wrote it; one the next hop re-wrote
    (case, spacing) is parsed and compared by sent-by."""
    setup.uac.send(options(f"127.0.0.1:{setup.uac.port}"), setup.address())
    request = await setup.forwarded()
    host, port = setup.sent_by.split(":")
    written = str(request.top_via)
    rewritten = written.replace(f"SIP/2.0/UDP {host}:{port}", f"sip/2.0/udp {host} : {port}")
    data = request.serialize().replace(written.encode(), rewritten.encode(), 1)
    setup.uas.send(answer(data), setup.address())
    response = await setup.uac.recv_message()
    assert isinstance(response, Response)
    assert len(response.vias) == 1
    assert setup.forwarder.stats.responses_forwarded == 1


async def test_a_via_with_our_host_and_another_port_is_not_ours(setup: Setup) -> None:
    host, port = setup.sent_by.split(":")
    stray = answer(options(f"{host}:{int(port) % 60000 + 1}"))
    setup.uas.send(stray, setup.address())
    await setup.uac.nothing()
    assert setup.forwarder.stats.responses_not_ours == 1


WRITTEN_PARAMS = {
    # what our Via carries after its sent-by -> whether written_flow reads it
    ";branch=z9hG4bK-lsb.a.b;sfi=u0": True,
    ";branch=z9hG4bK-lsb.a.b;sfi=u1": True,
    ";branch=z9hG4bK-lsb.a.b": True,
    ";branch=z9hG4bK-lsb.a.b;sfi=u2": False,  # not one of our sockets
    ";branch=z9hG4bK-lsb.a.b;sfi=u01": False,  # flow_of reads it: the long way
    ";branch=z9hG4bK-lsb.a.b;sfi=u0;sfi=u1": False,
    ";branch=z9hG4bK-lsb.a.b;sfi=u0;lbf=abc": False,  # a mark the caller reads
    ";branch=z9hG4bK-lsb.a.b;lba=YWxpY2U;sfi=u0": False,
    ";branch=z9hG4bK-lsb.a.b;SFI=u0": False,
    ";branch=z9hG4bK-lsb.a=b;sfi=u0": False,  # '=' in the branch: marks may hide there
    ";branch=xbranch=z9hG4bK-lb;sfi=u0": False,
    ";branch=z9hG4bK-lb-probe-1;sfi=u0": False,  # set apart: the caller's probes
    ";Branch=z9hG4bK-lsb.a.b;sfi=u0": False,
    ";branch=;sfi=u0": False,
    ";branch=z9hG4bK-lsb.a.b;": False,
    ";received=127.0.0.1;branch=z9hG4bK-lsb.a.b": False,
    "": False,
}


@pytest.mark.parametrize("params", list(WRITTEN_PARAMS))
async def test_our_via_as_we_write_it_is_read_without_searching_it(params: str) -> None:
    """``written_flow`` gives what ``flow_of`` gives for a Via we wrote, or leaves it to
    the long way (``wrote``, then ``flow_of``); never another answer."""
    async with relay("udp:127.0.0.1:0", "udp:127.0.0.1:0") as made:
        forwarder = made.forwarder
        ours = f"SIP/2.0/UDP {made.sent_by}{params}"
        got = forwarder.written_flow(ours, ("z9hG4bK-lb",))
        assert (got is not None) is WRITTEN_PARAMS[params]
        if got is not None:
            assert forwarder.wrote(ours)
            assert got == flow_of(ours)
        try:
            long_way = flow_of(ours)
        except ParseError:
            long_way = None
        assert got is None or got == long_way
        stranger = f"SIP/2.0/UDP 192.0.2.1:5060{params}"
        assert forwarder.written_flow(stranger) is None
