"""Messages between LB workers: every kind survives the trip; junk is refused."""

from __future__ import annotations

import pytest

from sipfleet.core.lb import handoff
from sipfleet.sip.flow import Flow
from sipfleet.transport.base import Peer


@pytest.mark.parametrize(
    "message",
    [
        handoff.Received(
            b"INVITE sip:a@b SIP/2.0\r\n\r\n", Peer("udp", "127.0.0.1", 5080, "127.0.0.1", 5060)
        ),
        handoff.Received(b"BYE", Peer("tcp", "2001:db8::1", 4000, "::1", 5060, (1 << 32) + 5)),
        handoff.Received(b"BYE", Peer("tls", "192.0.2.9", 4000, "192.0.2.1", 5061, 12)),
        handoff.Send(b"SIP/2.0 200 OK\r\n\r\n", (2 << 32) + 9, "198.51.100.7", 40000),
        handoff.Send(b"SIP/2.0 200 OK\r\n\r\n", (1 << 32) + 3, "198.51.100.7", 40001, "wss"),
        handoff.Learn("AgAAtoken", "sip:alice@example.com", 3600),
        handoff.Answered(123456789),
        handoff.Loss("10.0.0.5", 5060, 30, 480, 1234.567),
        handoff.Loss("2001:db8::5", 5070, 0, 0, float("inf")),
    ],
)
def test_round_trip(message: handoff.Handed) -> None:
    assert handoff.decode(handoff.encode(message)) == message


@pytest.mark.parametrize(
    "junk", [b"", b"SFLB", b"SFLBZ", b"SFLBR\x00", b"SFLBS" + b"\x00" * 10 + b"\x09ab", b"INVITE"]
)
def test_junk_is_refused(junk: bytes) -> None:
    with pytest.raises(handoff.BadHandoff):
        handoff.decode(junk)


def test_the_owner_of_a_flow() -> None:
    assert handoff.owner_of_flow(Flow("tcp", "192.0.2.1", 1, 5, 3), 4) == 3
    assert handoff.owner_of_flow(Flow("udp", "192.0.2.1", 1, 0, 3), 2) == 1  # fewer workers now
