"""parse_message on datagrams: start lines, framing, and the status each defect is answered with."""

from __future__ import annotations

import pytest

from sipfleet.sip import ParseError, Request, Response, parse_message, validate_request
from sipfleet.sip.builders import make_response
from tests.sip.corpus import BYE, INVITE, OPTIONS, RESPONSE_180, sip


def parse_and_validate(data: bytes, max_size: int) -> None:
    message = parse_message(data, max_size)
    if isinstance(message, Request):
        validate_request(message)


def error_of(data: bytes, max_size: int = 65535) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_and_validate(data, max_size)
    return info.value


def test_a_datagram_is_one_message_and_content_length_trims_the_body() -> None:
    msg = parse_message(BYE + b"trailing junk")
    assert msg.body == b""
    assert msg.serialize() == BYE


def test_without_content_length_a_datagram_body_runs_to_the_end() -> None:
    data = sip("MESSAGE sip:a@b SIP/2.0\n").replace(b"Content-Length: 0\r\n", b"") + b"hello"
    msg = parse_message(data)
    assert msg.content_length is None
    assert msg.body == b"hello"


def test_content_length_larger_than_the_datagram_is_400() -> None:
    error = error_of(BYE.replace(b"Content-Length: 0", b"Content-Length: 10"))
    assert (error.status, error.reason) == (400, "Content-Length larger than the message")


def test_oversized_datagram_is_513_and_answerable() -> None:
    error = error_of(INVITE, max_size=len(INVITE) - 1)
    assert error.status == 513
    assert isinstance(error.message, Request)
    assert make_response(error.message, 513).status == 513


def test_leading_blank_lines_are_skipped() -> None:
    msg = parse_message(b"\r\n\r\n" + OPTIONS)
    assert isinstance(msg, Request)
    assert msg.serialize() == OPTIONS


def test_bare_lf_line_ends_are_tolerated_and_written_back_as_crlf() -> None:
    data = OPTIONS.replace(b"\r\n", b"\n")
    msg = parse_message(data)
    assert isinstance(msg, Request)
    validate_request(msg)
    assert msg.serialize() == data  # unchanged: forwarded as received
    msg.add_header("X-A", "1")
    assert b"\r\nX-A: 1\r\n\r\n" in msg.serialize()


def test_head_without_its_empty_line_is_accepted_when_it_ends_with_crlf() -> None:
    data = OPTIONS[: OPTIONS.index(b"\r\n\r\n") + 2]
    msg = parse_message(data)
    assert isinstance(msg, Request)
    assert msg.call_id == "a84b4c76e66710"


def test_head_cut_short_is_400_and_still_answerable() -> None:
    error = error_of(OPTIONS[: OPTIONS.index(b"Call-ID")])
    assert error.status == 400
    assert isinstance(error.message, Request)


@pytest.mark.parametrize(
    ("start_line", "status", "answerable"),
    [
        (b"OPTIONS sip:a@b SIP/3.0", 505, True),
        (b"OPTIONS sip:a@b SIP/2.0x", 400, True),
        (b"OPTIONS sip:a@b HTTP/1.1", 400, True),
        (b"OPTIONS  sip:a@b SIP/2.0", 400, True),
        (b"OPTIONS sip:a@b", 400, True),
        (b"OPT@ONS sip:a@b SIP/2.0", 400, True),
        (b"\xff\xfe garbage", 400, False),
        (b"SIP/2.0 2000 OK", 400, False),
        (b"SIP/2.0 099 Too Low", 400, False),
        (b"SIP/2.0 700 Too High", 400, False),
        (b"SIP/2.0 1\xb23 Superscript", 400, False),
        (b"SIP/2.0", 400, False),
    ],
)
def test_bad_start_lines(start_line: bytes, status: int, answerable: bool) -> None:
    data = start_line + OPTIONS[OPTIONS.index(b"\r\n") :]
    error = error_of(data)
    assert error.status == status
    assert isinstance(error.message, Request) is answerable
    if isinstance(error.message, Request):
        answer = parse_message(make_response(error.message, error.status, error.reason).serialize())
        assert isinstance(answer, Response)
        assert answer.status == status


def test_unsupported_request_uri_scheme_is_416() -> None:
    error = error_of(OPTIONS.replace(b"sip:carol@chicago.example.com SIP", b"http://x/ SIP", 1))
    assert error.status == 416


def test_response_with_a_broken_status_line_carries_nothing_to_answer() -> None:
    error = error_of(RESPONSE_180.replace(b"180", b"18", 1))
    assert error.message is None


def test_nul_bytes_are_refused_unless_escaped_in_a_quoted_string() -> None:
    error = error_of(OPTIONS.replace(b"Call-ID: a84b", b"Call-ID: a8\x004b"))
    assert (error.status, error.reason) == (400, "NUL byte in message header")
    assert isinstance(error.message, Request)
    quoted = OPTIONS.replace(b"From: Alice", b'From: "Al\\\x00ice"')
    msg = parse_message(quoted)
    assert msg.from_.display_name == "Al\x00ice"
    body_nul = (
        sip("MESSAGE sip:a@b SIP/2.0\n").replace(b"Content-Length: 0", b"l: 3") + b"\x00\x00\x00"
    )
    assert parse_message(body_nul).body == b"\x00\x00\x00"


@pytest.mark.parametrize("stray", [b"\n", b"\r"])
def test_a_lone_cr_or_lf_inside_the_head_is_refused(stray: bytes) -> None:
    # Elements that end lines at a bare LF would see an injected header we never saw.
    data = OPTIONS.replace(
        b"Call-ID: a84b4c76e66710", b"Call-ID: a84b" + stray + b"Route: <sip:evil>"
    )
    error = error_of(data)
    assert error.status == 400
    assert "CR or LF" in error.reason
    assert isinstance(error.message, Request)


def test_header_value_keeps_utf8_bytes_that_look_like_unicode_blanks() -> None:
    # "à" is C3 A0 and "Å" is C3 85 in UTF-8: as latin-1 text they end in NBSP and NEL,
    # which str.strip() would eat.
    subject = "voilà Å".encode()
    msg = parse_message(OPTIONS.replace(b"Accept:", b"Subject: " + subject + b"\r\nAccept:"))
    value = msg.header("subject")
    assert value is not None
    assert value.encode("latin-1") == subject
    folded = OPTIONS.replace(b"Accept:", b"Subject: x\r\n " + subject + b"\r\nAccept:")
    value = parse_message(folded).header("subject")
    assert value is not None
    assert value.encode("latin-1") == b"x " + subject


def test_unknown_header_names_and_broken_lines() -> None:
    msg = parse_message(OPTIONS.replace(b"Accept:", b"X-Brand-New_Header.1: yes\r\nAccept:"))
    assert msg.header("x-brand-new_header.1") == "yes"
    for broken in (b"No colon here", b": no name", b"Bad Name: x", b"Bad\x01Name: x"):
        error = error_of(OPTIONS.replace(b"Accept:", broken + b"\r\nAccept:"))
        assert error.status == 400
        assert isinstance(error.message, Request)


def test_continuation_of_a_dropped_line_is_dropped_with_it() -> None:
    data = OPTIONS.replace(b"Accept:", b"Bad Name: x\r\n continued\r\nAccept:")
    error = error_of(data)
    assert isinstance(error.message, Request)
    assert all("continued" not in line for line in error.message.lines)
    answer = make_response(error.message, 400, error.reason).serialize()
    assert b"continued" not in answer
