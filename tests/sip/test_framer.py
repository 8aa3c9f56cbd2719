"""Cutting a TCP byte stream into messages and RFC 5626 keep-alives; UDP keep-alives."""

from __future__ import annotations

import re

import pytest

from sipfleet.sip import ParseError, Request, StreamFramer, parse_message
from sipfleet.sip.parser import KeepAlivePing, KeepAlivePong, is_keepalive
from tests.sip.corpus import BYE, INVITE, OPTIONS, REGISTER, RESPONSE_180, sip

PING = b"\r\n\r\n"
PONG = b"\r\n"


def test_several_messages_in_one_chunk() -> None:
    framer = StreamFramer()
    items = framer.feed(INVITE + RESPONSE_180 + BYE)
    assert items == [INVITE, RESPONSE_180, BYE]
    assert framer.pending == 0
    first = items[0]
    assert isinstance(first, bytes)
    assert parse_message(first, stream=True).serialize() == INVITE


def test_one_message_in_many_chunks() -> None:
    framer = StreamFramer()
    out: list[object] = []
    for i in range(len(INVITE)):
        out += framer.feed(INVITE[i : i + 1])
        if i < len(INVITE) - 1:
            assert out == []
    assert out == [INVITE]


def test_chunks_that_straddle_messages() -> None:
    stream = REGISTER + OPTIONS + BYE
    framer = StreamFramer()
    out: list[object] = []
    for start in range(0, len(stream), 97):
        out += framer.feed(stream[start : start + 97])
    assert out == [REGISTER, OPTIONS, BYE]


def test_crlfcrlf_is_a_ping_and_crlf_a_pong() -> None:
    framer = StreamFramer()
    assert framer.feed(PING) == [KeepAlivePing()]
    assert framer.feed(PONG) == [KeepAlivePong()]
    assert framer.feed(PING + OPTIONS + PONG + BYE + PING) == [
        KeepAlivePing(),
        OPTIONS,
        KeepAlivePong(),
        BYE,
        KeepAlivePing(),
    ]
    # The bytes themselves cannot tell a pong followed by a ping from a ping and a pong.
    assert framer.feed(PONG + PING) == [KeepAlivePing(), KeepAlivePong()]


def test_message_split_inside_its_header_end() -> None:
    cut = INVITE.index(b"\r\n\r\n") + 2
    framer = StreamFramer()
    assert framer.feed(INVITE[:cut]) == []
    assert framer.feed(INVITE[cut:]) == [INVITE]


def test_binary_body_with_crlfcrlf_is_framed_by_content_length() -> None:
    body = b"\x00\r\n\r\n\xff" * 10
    message = sip("MESSAGE sip:a@b SIP/2.0\nContent-Type: application/octet-stream\n") + body
    message = message.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    assert StreamFramer().feed(message + PING) == [message, KeepAlivePing()]


def test_compact_content_length() -> None:
    message = sip("OPTIONS sip:a@b SIP/2.0\n").replace(b"Content-Length: 0", b"l: 0")
    assert StreamFramer().feed(message) == [message]


def framing_error(data: bytes, max_size: int = 65535) -> ParseError:
    with pytest.raises(ParseError) as info:
        StreamFramer(max_size).feed(data)
    return info.value


def test_missing_content_length_is_a_400_with_the_request_attached() -> None:
    data = re.sub(rb"Content-Length: \d+\r\n", b"", INVITE)
    assert b"Content-Length" not in data
    error = framing_error(data)
    assert error.status == 400
    assert "Content-Length" in error.reason
    assert isinstance(error.message, Request)
    assert error.message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


@pytest.mark.parametrize("value", [b"-1", b"five", b"1 2", b"", b"99999999999", b"\xb2"])
def test_bad_content_length_is_a_400(value: bytes) -> None:
    error = framing_error(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: " + value))
    assert error.status == 400
    assert isinstance(error.message, Request)


def test_two_content_lengths_are_a_400() -> None:
    data = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 5")
    assert framing_error(data).reason == "Multiple Content-Length headers"


def test_huge_content_length_is_513() -> None:
    error = framing_error(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 4294967295"))
    assert error.status == 513
    assert isinstance(error.message, Request)


def test_oversized_message_is_513() -> None:
    assert framing_error(INVITE, max_size=len(INVITE) - 1).status == 513
    assert StreamFramer(max_size=len(INVITE)).feed(INVITE) == [INVITE]


def test_endless_header_is_513_once_it_passes_the_limit() -> None:
    framer = StreamFramer(max_size=1000)
    assert framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 900) == []
    with pytest.raises(ParseError) as info:
        framer.feed(b"y" * 200)
    assert info.value.status == 513


def test_framed_message_without_content_length_is_refused_by_the_stream_parser() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(
            sip("OPTIONS sip:a@b SIP/2.0\n").replace(b"Content-Length: 0\r\n", b""), stream=True
        )
    assert "stream" in info.value.reason


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (PING, True),
        (PONG, True),
        (b"\r\n\r\n\r\n", True),
        (b" \t", True),
        (b"", True),
        (b"\x00\x00\x00\x00", True),
        (OPTIONS, False),
        (b"\r\nX", False),
    ],
)
def test_udp_keepalive_detection(datagram: bytes, expected: bool) -> None:
    assert is_keepalive(datagram) is expected
