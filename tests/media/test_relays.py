"""Relay addresses from config strings, and which relay a Call-ID goes to."""

from __future__ import annotations

import collections
import re

import pytest

from sipfleet.media.relays import RelayAddress, parse_relays, rendezvous_pick


@pytest.mark.parametrize(
    ("entry", "host", "port", "weight", "name"),
    [
        ("udp:127.0.0.1:2223", "127.0.0.1", 2223, 1, "127.0.0.1:2223"),
        ("udp:127.0.0.1:2223=2", "127.0.0.1", 2223, 2, "127.0.0.1:2223"),
        ("udp:[::1]:2223", "::1", 2223, 1, "[::1]:2223"),
        ("udp6:[0:0::1]:2223=5", "::1", 2223, 5, "[::1]:2223"),
        (" udp:RTP1.example.net:22222 ", "rtp1.example.net", 22222, 1, "rtp1.example.net:22222"),
    ],
)
def test_parse(entry: str, host: str, port: int, weight: int, name: str) -> None:
    relay = RelayAddress.parse(entry)
    assert (relay.host, relay.port, relay.weight, relay.name) == (host, port, weight, name)


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "127.0.0.1:2223",
        "tcp:127.0.0.1:2223",
        "udp:127.0.0.1",
        "udp:::1:2223",
        "udp:[::g]:2223",
        "udp:[127.0.0.1]:2223",
        "udp:127.0.0.1:0",
        "udp:127.0.0.1:70000",
        "udp:127.0.0.1:2223=0",
        "udp:127.0.0.1:2223=1001",
        "udp:127.0.0.1:2223=x",
        "udp:999.1.1.1:2223",
        "udp:-bad-:2223",
        "udp:a b:2223",
    ],
)
def test_parse_errors_name_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"media relay {entry!r}")):
        RelayAddress.parse(entry)


def test_a_relay_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        parse_relays(["udp:127.0.0.1:2223", "udp:127.0.0.1:2223=3"])


def test_equal_addresses_are_equal() -> None:
    assert RelayAddress.parse("udp:127.0.0.1:1=2") == RelayAddress("127.0.0.1", 1, 2)


RELAYS = parse_relays(["udp:127.0.0.1:2001", "udp:127.0.0.1:2002=2", "udp:[::1]:2003"])
CALL_IDS = [f"{n}-a84b4c76e66710@pc33.example.com" for n in range(6000)]


def test_pick_is_stable_and_independent_of_order() -> None:
    for call_id in CALL_IDS[:200]:
        first = rendezvous_pick(call_id, RELAYS)
        assert rendezvous_pick(call_id, list(reversed(RELAYS))) == first
        assert rendezvous_pick(call_id, RELAYS) == first


def test_pick_spreads_by_weight() -> None:
    shares = collections.Counter(rendezvous_pick(c, RELAYS) for c in CALL_IDS)
    expected = {RELAYS[0]: 0.25, RELAYS[1]: 0.5, RELAYS[2]: 0.25}
    for relay, share in expected.items():
        assert shares[relay] / len(CALL_IDS) == pytest.approx(share, abs=0.03)


def test_a_relay_leaving_moves_only_its_own_calls() -> None:
    survivors = [RELAYS[0], RELAYS[2]]
    for call_id in CALL_IDS[:1000]:
        before = rendezvous_pick(call_id, RELAYS)
        after = rendezvous_pick(call_id, survivors)
        if before != RELAYS[1]:
            assert after == before


def test_pick_from_no_relay_is_none() -> None:
    assert rendezvous_pick("c", []) is None
