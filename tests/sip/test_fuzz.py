"""Fuzzing the message layer: bad input may only ever surface as ParseError, and the
answer to a broken request must build and parse.

A deterministic mutation fuzz (bit flips, truncations, duplicated, dropped, nasty and
oversized headers, odd Content-Lengths, NUL bytes, garbage folding) over the corpus and
the RFC 4475 messages, then hypothesis over arbitrary and structured input. Seeded, so a
failure reproduces.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfleet.sip import (
    Address,
    Message,
    ParseError,
    Request,
    Response,
    SipUri,
    StreamFramer,
    parse_message,
    validate_request,
    validate_response,
)
from sipfleet.sip.builders import make_ack_for_failure, make_cancel, make_response, stateless_branch
from sipfleet.sip.parser import is_keepalive
from sipfleet.sip.uri import uri_equal
from tests.sip import corpus, rfc4475

ANSWER_STATUSES = {400, 416, 505, 513}


def attempt(action: Callable[..., object], *args: object) -> object:
    """Run one accessor or edit: it may refuse with ParseError, and with nothing else."""
    try:
        return action(*args)
    except ParseError as exc:
        check_error(exc)
        return None


def check_error(exc: ParseError) -> None:
    assert exc.status in ANSWER_STATUSES, exc
    assert isinstance(exc.reason, str)
    assert exc.reason
    if isinstance(exc.message, Request):
        check_answer(exc.message, exc.status, exc.reason)
    else:
        assert exc.message is None or isinstance(exc.message, Response)


def check_answer(request: Request, status: int, reason: str) -> None:
    """The server's answer to a broken request must build, and must itself parse."""
    response = make_response(request, status, reason, to_tag="fz1")
    data = response.serialize()
    assert isinstance(data, bytes)
    assert data.startswith(f"SIP/2.0 {status} ".encode())
    reparsed = attempt(lambda: parse_message(data))
    if reparsed is not None:  # the copied lines may be broken; the status line is ours
        assert isinstance(reparsed, Response)
        assert reparsed.status == status


def touch_address(address: Address) -> None:
    str(address)
    address.display_name  # noqa: B018
    address.tag  # noqa: B018
    dict(address.params)
    attempt(getattr, address, "expires")
    attempt(getattr, address, "q")
    uri = attempt(getattr, address, "uri")
    if uri is not None:
        str(uri)
        if isinstance(uri, SipUri):
            touch_sip_uri(uri)
        else:
            hash(uri)
            assert uri == uri


def touch_sip_uri(uri: SipUri) -> None:
    uri.host_bare  # noqa: B018
    uri.transport  # noqa: B018
    uri.is_loose_router  # noqa: B018
    assert uri_equal(uri, uri)
    hash(uri)
    uri.render()


def touch_everything(message: Message) -> None:
    """Every typed accessor, the lazily parsed parts included."""
    vias = attempt(lambda: message.vias)
    for via in vias if isinstance(vias, list) else []:
        str(via)
        via.sent_by  # noqa: B018
        for name in ("params", "branch", "received", "rport", "has_rport", "is_rfc3261"):
            attempt(getattr, via, name)
        attempt(via.response_address)
    attempt(lambda: message.top_via)
    for name in ("from_", "to", "top_route"):
        address = attempt(getattr, message, name)
        if isinstance(address, Address):
            touch_address(address)
    for name in ("contacts", "routes", "record_routes", "paths"):
        addresses = attempt(getattr, message, name)
        for address in addresses if isinstance(addresses, list) else []:
            touch_address(address)
    for name in (
        "call_id",
        "cseq",
        "max_forwards",
        "expires",
        "content_length",
        "content_type",
        "contact_is_star",
        "require",
        "proxy_require",
        "supported",
        "unsupported",
    ):
        attempt(getattr, message, name)
    for name in ("authorization", "proxy_authorization", "www_authenticate", "proxy_authenticate"):
        headers = attempt(getattr, message, name)
        for header in headers if isinstance(headers, list) else []:
            assert isinstance(header.algorithm, str)
            assert isinstance(header.is_digest, bool)
            assert isinstance(header.params, dict)
    for key in set(message.keys):
        message.has(key)
        message.header(key)
        message.header_lines(key)
        attempt(message.header_values, key)
    if isinstance(message, Request):
        uri = attempt(lambda: message.uri)
        if isinstance(uri, SipUri):
            touch_sip_uri(uri)


def exercise_builders(request: Request) -> None:
    attempt(lambda: stateless_branch(request))
    check_answer(request, 200, "OK")
    check_answer(request, 100, "Trying")
    cancel = attempt(lambda: make_cancel(request))
    if isinstance(cancel, Request):
        attempt(lambda: parse_message(cancel.serialize()))
    answer = make_response(request, 486, to_tag="uas")
    ack = attempt(lambda: make_ack_for_failure(request, answer))
    if isinstance(ack, Request):
        attempt(lambda: parse_message(ack.serialize()))


def exercise_edits(message: Message) -> None:
    copy = message.copy()
    attempt(lambda: copy.pop_via())
    copy.push_via("SIP/2.0/UDP lb.example.com;branch=z9hG4bK-fuzz")
    attempt(lambda: copy.pop_route())
    copy.add_record_route("<sip:lb.example.com;lr>")
    if isinstance(copy, Request):
        attempt(lambda: copy.decrement_max_forwards())
    copy.set_header("X-Fuzz", "1")
    data = copy.serialize()
    assert isinstance(data, bytes)
    attempt(lambda: parse_message(data))


def exercise(data: bytes) -> Message | None:
    """Everything the servers do with received bytes; returns the message if it parsed."""
    is_keepalive(data)
    items = attempt(lambda: StreamFramer(max_size=4096).feed(data))
    for item in items if isinstance(items, list) else []:
        if isinstance(item, bytes):
            attempt(parse_message, item, 65535, True)
    message = attempt(lambda: parse_message(data))
    if message is None:
        return None
    assert isinstance(message, Message)
    if isinstance(message, Request):
        attempt(lambda: validate_request(message))
        exercise_builders(message)
    else:
        assert isinstance(message, Response)
        attempt(lambda: validate_response(message))
    touch_everything(message)
    serialized = message.serialize()
    assert data.startswith(serialized) or data.lstrip(b"\r\n").startswith(serialized)
    exercise_edits(message)
    return message


# -- the corpus --------------------------------------------------------------------------

SEEDS: dict[str, bytes] = {**corpus.ALL, **rfc4475.ALL}
NASTY_VALUES = [
    "",
    " ",
    ",",
    ";",
    ":",
    "<",
    ">",
    '"',
    "\\",
    "<>",
    "<sip:>",
    "sip:",
    "sip:@",
    "*",
    "=",
    "a=b=c",
    ";;,,;;",
    "[",
    "[::1",
    "]",
    "%",
    "%zz",
    "%00",
    "\xff\xfe",
    "\x00",
    "\x7f",
    "99999999999999999999",
    "-1",
    "+5",
    "0x10",
    "\xb2",
    "1e3",
    " 5 ",
    "sip:a@b;lr,",
    '"a\\',
    "<sip:a@[::1]:99999>",
    "SIP/2.0/UDP",
    "SIP/2.0/UDP [::1",
    "Digest ,,,",
    'Digest a="',
    "x" * 5000,
    "<" * 300,
    '"' * 301,
    ";x" * 500,
    "9" * 5000,
]
HEADER_NAMES = [
    "Via",
    "v",
    "From",
    "f",
    "To",
    "t",
    "Call-ID",
    "i",
    "CSeq",
    "Max-Forwards",
    "Contact",
    "m",
    "Route",
    "Record-Route",
    "Path",
    "Expires",
    "Content-Length",
    "l",
    "Content-Type",
    "c",
    "Require",
    "Proxy-Require",
    "Supported",
    "k",
    "Unsupported",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "X-Other",
]
CONTENT_LENGTHS = [
    b"-1",
    b"-999",
    b"4294967296",
    b"99999999999999999999",
    b"1e3",
    b"0x10",
    b"+5",
    b" 5 ",
    b"\xb2",
    b"five",
    b"",
    b"9" * 5000,
]


def header_lines_of(data: bytes) -> list[bytes]:
    return data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]


def mutations(data: bytes, rng: random.Random) -> list[bytes]:
    """Deterministic mutants of one message: a few of each kind."""
    out: list[bytes] = []
    head_end = data.find(b"\r\n\r\n")
    for _ in range(20):  # bit flips
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(mutant))
            mutant[at] ^= 1 << rng.randrange(8)
        out.append(bytes(mutant))
    # truncation at every kind of position: in each line, at CR, at LF, in the body
    cuts = {0, 1, len(data) - 1, head_end, head_end + 1, head_end + 2, head_end + 3}
    for at in range(len(data)):
        if data[at : at + 1] in (b"\r", b"\n", b":", b";", b",", b"<", b">", b'"', b" "):
            cuts.add(at)
    out += [data[:at] for at in sorted(cuts) if 0 <= at < len(data)]
    lines = header_lines_of(data)
    for line in lines:  # every header duplicated, and each dropped
        out.append(data.replace(line + b"\r\n", line + b"\r\n" + line + b"\r\n", 1))
        out.append(data.replace(line + b"\r\n", b"", 1))
    for name in HEADER_NAMES:  # every known header with nasty values
        for value in rng.sample(NASTY_VALUES, 6):
            extra = f"{name}: {value}\r\n".encode("latin-1")
            out.append(data.replace(b"\r\n", b"\r\n" + extra, 1))
    for length in CONTENT_LENGTHS:
        out.append(
            re.sub(rb"(?im)^(content-length|l)[ \t]*:[^\r\n]*", b"Content-Length: " + length, data)
        )
    out.append(data.replace(b"\r\n", b"\r\nX-Big: " + b"y" * 70000 + b"\r\n", 1))  # 513
    for _ in range(8):  # NUL bytes in the start line, the names, the values, the body
        at = rng.randrange(len(data))
        out.append(data[:at] + b"\x00" + data[at:])
    for junk in (b"\r\n ", b"\r\n\t", b"\r\n", b"\r", b"\n", b"\r\n \r\n", b"\n\n", b"\r\n\r\n"):
        for _ in range(3):  # garbage folding and line breaks anywhere in the head
            at = rng.randrange(max(1, head_end))
            out.append(data[:at] + junk + data[at:])
    out.append(b"\r\n\r\n" + data)
    out.append(data.replace(b"\r\n", b"\n"))
    out.append(data.replace(b"SIP/2.0", b"SIP/2.1", 1))
    return out


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutants_raise_nothing_but_parse_error(name: str) -> None:
    rng = random.Random(f"sipfleet-{name}")
    for mutant in mutations(SEEDS[name], rng):
        exercise(mutant)


def test_every_truncation_of_a_short_message() -> None:
    data = corpus.OPTIONS
    for at in range(len(data) + 1):
        exercise(data[:at])


def test_seeds_parse_and_validate_where_the_rfc_says_so() -> None:
    # The fuzz harness itself must see the good messages as good.
    for name in (*corpus.ALL, *rfc4475.VALID):
        message = exercise(SEEDS[name])
        assert message is not None, name


# -- hypothesis ---------------------------------------------------------------------------

# SIPFLEET_FUZZ_EXAMPLES=20000 turns the quick seeded run into a longer random hunt.
_HUNT = os.environ.get("SIPFLEET_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_HUNT) if _HUNT else 250,
    deadline=None,
    derandomize=_HUNT is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(st.binary(max_size=1500))
def test_arbitrary_bytes(data: bytes) -> None:
    exercise(data)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_valid_start_line(tail: bytes) -> None:
    exercise(b"INVITE sip:bob@example.com SIP/2.0\r\n" + tail)
    exercise(b"SIP/2.0 200 OK\r\n" + tail)


TOKENS = st.sampled_from(
    [
        b"\r\n",
        b"\r\n ",
        b":",
        b";",
        b",",
        b"<",
        b">",
        b'"',
        b"\\",
        b"@",
        b"%",
        b"=",
        b"?",
        b"[",
        b"]",
        b"\x00",
        b"\xff",
        b" ",
        b"\t",
        b"sip:",
        b"SIP/2.0",
        b"z9hG4bK",
        b"tag=",
        b"*",
        b"-",
        b"0",
        b"9999999999999",
    ]
)
EDIT = st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=8), TOKENS)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.lists(EDIT, min_size=1, max_size=6))
def test_structured_mutations_of_the_corpus(name: str, edits: list[tuple[int, int, bytes]]) -> None:
    data = SEEDS[name]
    for position, delete, token in edits:  # replace a short run of bytes by a SIP token
        at = position % (len(data) + 1)
        data = data[:at] + token + data[at + delete :]
    exercise(data)


HEADER = st.tuples(
    st.sampled_from(HEADER_NAMES),
    st.one_of(
        st.sampled_from(NASTY_VALUES[:40]),
        st.text(alphabet=st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=60),
    ),
)


@FUZZ
@given(st.lists(HEADER, max_size=12), st.booleans())
def test_messages_made_of_odd_headers(headers: list[tuple[str, str]], response: bool) -> None:
    start = "SIP/2.0 180 Ringing" if response else "INVITE sip:bob@example.com SIP/2.0"
    lines = [start, *(f"{name}: {value}" for name, value in headers)]
    exercise(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
