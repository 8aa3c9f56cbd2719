"""The endpoint's steering hook (several workers of a stateful role): asked first on
every message received and every send to a TCP connection; absent, nothing changes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sipfleet.core.endpoint import SipEndpoint
from sipfleet.sip import Request, Response
from sipfleet.transport import Destination, Peer, TransportError
from tests.transport.helpers import options

PEER = Peer("udp", "192.0.2.7", 5060, "127.0.0.1", 5080)


@dataclass
class Handler:
    requests: list[Request] = field(default_factory=list)

    def on_request(self, request: Request, peer: Peer) -> None:
        self.requests.append(request)

    def on_response(self, response: Response, peer: Peer) -> None:
        raise AssertionError("no response expected")


@dataclass
class Steering:
    others: bool  # whether every message and connection is another worker's
    received: list[bytes] = field(default_factory=list)
    sent: list[Destination] = field(default_factory=list)

    def elsewhere(self, data: bytes, peer: Peer) -> bool:
        self.received.append(data)
        return self.others

    def sent_elsewhere(self, data: bytes, destination: Destination) -> bool:
        self.sent.append(destination)
        return self.others


def endpoint_with(steering: Steering | None) -> tuple[SipEndpoint, Handler]:
    handler = Handler()
    endpoint = SipEndpoint([], handler)
    endpoint.steering = steering
    return endpoint, handler


@pytest.mark.parametrize("others", [True, False])
def test_a_message_another_worker_owns_is_not_handled_here(others: bool) -> None:
    steering = Steering(others)
    endpoint, handler = endpoint_with(steering)
    endpoint.frame_received(options("192.0.2.7:5060"), PEER)
    assert steering.received == [options("192.0.2.7:5060")]
    assert len(handler.requests) == (0 if others else 1)
    assert endpoint.stats.requests_received == (0 if others else 1)


def test_without_steering_every_message_is_handled_here() -> None:
    endpoint, handler = endpoint_with(None)
    endpoint.frame_received(options("192.0.2.7:5060"), PEER)
    assert len(handler.requests) == 1


def test_a_send_on_another_workers_connection_goes_through_it() -> None:
    steering = Steering(others=True)
    endpoint, _ = endpoint_with(steering)
    destination = Destination("tcp", "192.0.2.7", 5060, (1 << 32) + 1)
    endpoint.send_bytes(b"SIP/2.0 200 OK\r\n\r\n", destination)
    assert steering.sent == [destination]
    assert endpoint.stats.messages_sent == 1


def test_sends_without_a_connection_are_not_asked_about() -> None:
    steering = Steering(others=True)
    endpoint, _ = endpoint_with(steering)
    with pytest.raises(TransportError):  # no UDP socket in this endpoint: sent here
        endpoint.send_bytes(b"x", Destination("udp", "192.0.2.7", 5060))
    assert steering.sent == []
