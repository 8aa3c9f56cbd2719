"""Which worker owns a message, and the handoff's bytes: no sockets."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest

from sipfleet.transport.base import Destination, Peer
from sipfleet.transport.steering import (
    BadHandoff,
    Received,
    Send,
    call_id_of,
    decode,
    encode,
    owner_of,
    owner_of_call_id,
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def with_call_id_line(line: bytes) -> bytes:
    return INVITE.replace(b"Call-ID: a84b4c76e66710@pc33", line)


@pytest.mark.parametrize(
    "line",
    [
        b"Call-ID: a84b4c76e66710@pc33",
        b"call-id: a84b4c76e66710@pc33",
        b"CALL-ID:a84b4c76e66710@pc33",
        b"Call-Id \t:  a84b4c76e66710@pc33  ",
        b"i: a84b4c76e66710@pc33",
        b"I:a84b4c76e66710@pc33",
    ],
)
def test_every_form_of_the_header_gives_the_same_call_id(line: bytes) -> None:
    assert call_id_of(with_call_id_line(line)) == b"a84b4c76e66710@pc33"


def test_the_value_keeps_its_case() -> None:
    """Call-IDs compare case-sensitively (RFC 3261 §20.8): AbC and abc are two calls."""
    assert call_id_of(with_call_id_line(b"i: AbC")) == b"AbC"


def test_a_response_and_a_cancel_of_the_call_have_its_owner() -> None:
    response = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        b"i: a84b4c76e66710@pc33\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    cancel = INVITE.replace(b"INVITE", b"CANCEL").replace(b"Call-ID:", b"call-id:")
    for workers in (2, 3, 4, 7):
        owner = owner_of(INVITE, workers)
        assert owner == owner_of(response, workers) == owner_of(cancel, workers)


def test_header_names_that_start_with_i_are_not_the_compact_form() -> None:
    data = with_call_id_line(b"In-Reply-To: x\r\nIdentity: y\r\nInfo: z")
    assert call_id_of(data) is None


def test_a_call_id_in_the_body_is_not_read() -> None:
    data = with_call_id_line(b"X-Other: 1").replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: 16\r\n\r\ni: not-a-header\r\n"
    )
    assert call_id_of(data) is None
    assert owner_of(data, 2) is None  # handled where it arrived: the parser answers 400


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"INVITE sip:x SIP/2.0\r\nCall-ID:   \r\n\r\n", b"\x00" * 64],
)
def test_no_call_id_no_owner(data: bytes) -> None:
    assert owner_of(data, 2) is None


def test_a_folded_value_has_no_owner() -> None:
    assert call_id_of(with_call_id_line(b"Call-ID:\r\n a84b4c76e66710@pc33")) is None


def test_the_hash_is_stable_across_processes() -> None:
    """crc32, not hash(): every worker, and a restarted one, computes the same owner."""
    assert owner_of_call_id(b"a84b4c76e66710@pc33", 4) == zlib.crc32(b"a84b4c76e66710@pc33") % 4


def test_call_ids_spread_evenly() -> None:
    counts = Counter(owner_of_call_id(f"{n}@host".encode(), 2) for n in range(4000))
    assert set(counts) == {0, 1}
    assert abs(counts[0] - counts[1]) < 300


def test_one_worker_owns_everything() -> None:
    assert owner_of(INVITE, 1) == 0


# -- the handoff ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        Received(INVITE, Peer("udp", "192.0.2.1", 5060, "127.0.0.1", 5080, None)),
        Received(INVITE, Peer("tcp", "2001:db8::1", 40000, "::1", 5080, (3 << 32) + 7)),
        Received(b"", Peer("udp", "192.0.2.1", 1, "127.0.0.1", 2)),
        Send(INVITE, Destination("tcp", "192.0.2.1", 5060, (1 << 32) + 5, None)),
        Send(b"x", Destination("tcp", "2001:db8::1", 5061, 9, ("::1", 5080))),
    ],
)
def test_a_handoff_decodes_to_what_was_encoded(message: Received | Send) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize(
    "blob",
    [b"", b"R", b"X" + bytes(17), bytes([0x52, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 0])],
)
def test_anything_else_is_a_bad_handoff(blob: bytes) -> None:
    with pytest.raises(BadHandoff):
        decode(blob)


def test_a_host_too_long_cannot_be_handed() -> None:
    with pytest.raises(BadHandoff):
        encode(Received(b"", Peer("udp", "h" * 256, 1, "127.0.0.1", 2)))
