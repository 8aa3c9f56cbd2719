"""Flow tokens (sipfleet.sip.flow): round trip, and nothing forged gets through."""

from __future__ import annotations

import pytest

from sipfleet.sip.flow import Flow, FlowTokens

TOKENS = FlowTokens(b"cluster-secret")


@pytest.mark.parametrize(
    "flow",
    [
        Flow("udp", "203.0.113.7", 40312),
        Flow("tcp", "198.51.100.2", 5060, connection=123456, worker=3, reach_by_flow=True),
        Flow("udp", "192.0.2.1", 5060, reach_by_flow=False),
        Flow("tcp", "2001:db8::1", 5061, connection=7),
        Flow("udp", "203.0.113.7", 40312, worker=1, lb=65535),
    ],
)
def test_round_trip(flow: Flow) -> None:
    token = TOKENS.encode(flow)
    assert TOKENS.decode(token) == flow


def test_token_is_safe_in_a_sip_user_part() -> None:
    token = TOKENS.encode(
        Flow("tcp", "2001:db8::1", 5061, connection=2**32 - 1, worker=255, lb=65535)
    )
    assert all(ch.isalnum() or ch in "-_" for ch in token)
    assert len(token) <= 64


def test_another_secret_does_not_accept_it() -> None:
    token = TOKENS.encode(Flow("udp", "203.0.113.7", 40312))
    assert FlowTokens(b"other-cluster").decode(token) is None


def test_every_single_character_change_is_refused() -> None:
    token = TOKENS.encode(Flow("udp", "203.0.113.7", 40312))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, original in enumerate(token):
        replacement = alphabet[(alphabet.index(original) + 1) % len(alphabet)]
        forged = token[:i] + replacement + token[i + 1 :]
        decoded = TOKENS.decode(forged)
        # The last character may carry only padding bits: then it decodes to the same flow.
        assert decoded is None or decoded == TOKENS.decode(token)


@pytest.mark.parametrize(
    "junk", ["", "x", "a" * 65, "!!!!", "é" * 10, "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
)
def test_junk_is_refused(junk: str) -> None:
    assert TOKENS.decode(junk) is None
