"""Bytes to messages: UDP datagrams, TCP byte streams (Content-Length framing, RFC 5626
CRLF keep-alives), and the checks a server makes before it acts on a request.

Only ``ParseError`` leaves this module for bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import WS, is_token, parse_int
from sipfleet.sip.headers import HEADER_KEYS, header_key
from sipfleet.sip.memo import Memo
from sipfleet.sip.message import (
    KNOWN_METHODS,
    SIP_VERSION,
    Message,
    Request,
    Response,
    header_value,
    index_of,
    stands_after,
)
from sipfleet.sip.uri import SipUri

DEFAULT_MAX_SIZE: Final = 65535
_VERSION: Final = re.compile(r"SIP/\d+\.\d+\Z", re.IGNORECASE)


def parse_message(data: bytes, max_size: int = DEFAULT_MAX_SIZE, stream: bool = False) -> Message:
    """Parse one message. For UDP (``stream=False``) Content-Length trims the body."""
    if data[:2] == b"\r\n":  # RFC 3261 §7.5: blank lines before the start line are skipped
        data = data.lstrip(b"\r\n")
    # Found in the decoded text: str.find is a direct call in the compiled build, where
    # bytes.find is a method lookup costing more than decoding the (small) body too.
    text = data.decode("latin-1")  # one character per byte: offsets are the same
    end = text.find("\r\n\r\n")
    if end != -1:
        head = text[:end]
        body_at = end + 4
        lines = head.split("\r\n")
        joined = "".join(lines)  # cheaper than counting: 'in' is a memchr
        stray = "\r" in joined or "\n" in joined
    else:
        end = text.find("\n\n")
        if end != -1:  # bare-LF line ends: tolerated, as Kamailio and OpenSIPS do
            body_at = end + 2
        elif text.endswith("\r\n"):
            end = body_at = len(text)
        else:
            raise _reject_unframed(data)
        head = text[:end]
        lines = [line.rstrip("\r") for line in head.split("\n")]
        stray = any("\r" in line for line in lines)
    message = _parse_head(lines, data)
    if len(data) > max_size:
        raise ParseError("Message Too Large", 513, message)
    if "\x00" in head and "\x00" in head.replace("\\\x00", ""):
        # A NUL is legal only as a quoted-pair (RFC 4475 §3.1.1.2); a bare one would cut
        # the text short in C code further on (databases, logs).
        raise ParseError("NUL byte in message header", 400, message)
    if stray:
        # A CR or LF alone inside a header line: elements that take a bare LF as a line
        # end would read other headers than we do (header smuggling).
        raise ParseError("Bad line end: CR or LF alone in the header", 400, message)
    _attach_body(message, data, body_at, stream)
    return message


def _reject_unframed(data: bytes) -> ParseError:
    """No empty line after the headers; still answerable if it is a request."""
    try:
        text = data.decode("latin-1")
        message = _parse_head(text.split("\r\n"), data)
    except ParseError as exc:
        return exc
    return ParseError("Missing empty line after the headers", 400, message)


def _parse_head(lines: list[str], raw: bytes) -> Message:
    start_line = lines[0]
    del lines[0]
    cache = HEADER_KEYS.table
    # "" marks a name not in the cache, for _resolve_keys to fill in (or reject).
    keys = []
    unknown = False
    for line in lines:  # compiled, find and a slice cost less than partition's 3 objects
        colon = line.find(":")
        key = cache.get(line[:colon] if colon >= 0 else line, "")
        unknown = unknown or not key
        keys.append(key)
    problem = _resolve_keys(lines, keys) if unknown else None
    message = _start(start_line, lines, keys, raw)
    if problem is not None:
        raise ParseError(problem, 400, message)
    return message


def _resolve_keys(lines: list[str], keys: list[str]) -> str | None:
    """The slow path: names not seen before, folded lines, empty or broken lines.

    Fixes ``lines`` and ``keys`` in place and returns the first defect found, if any.
    """
    problem: str | None = None
    dropped = False  # the line before was dropped: its continuation lines go with it
    i = 0
    while i < len(lines):
        if keys[i]:
            dropped = False
            i += 1
            continue
        line = lines[i]
        if not line:  # the end of a head that lacked its empty line
            del lines[i], keys[i]
            continue
        if line[0] in " \t":
            if i == 0 and not dropped:
                problem = problem or "Continuation line before the first header"
            elif not dropped:
                lines[i - 1] += "\r\n" + line
            del lines[i], keys[i]
            continue
        colon = line.find(":")
        try:
            if colon <= 0:
                raise ParseError("Header line without a colon")
            keys[i] = header_key(line[:colon])
        except ParseError as exc:
            problem = problem or f"{exc.reason}: {line[:40]!r}"
            del lines[i], keys[i]
            dropped = True
            continue
        dropped = False
        i += 1
    return problem


def _start(start_line: str, lines: list[str], keys: list[str], raw: bytes) -> Message:
    if start_line.startswith("SIP/"):
        return _status_line(start_line, lines, keys, raw)
    parts = start_line.split(" ")
    method = parts[0]
    if len(parts) == 3 and parts[2] == SIP_VERSION and parts[1] and method in KNOWN_METHODS:
        return Request(method, parts[1], lines, keys, b"", raw, SIP_VERSION, start_line)
    if method not in KNOWN_METHODS and not is_token(method):
        if start_line[:4].upper() == "SIP/":  # §7.1: the version is case-insensitive
            return _status_line(start_line, lines, keys, raw)
        # Answerable (400) when the rest of the line says it is a SIP request.
        answerable = len(parts) == 3 and _VERSION.match(parts[2]) is not None
        request = Request(method, parts[1], lines, keys, raw=raw) if answerable else None
        raise ParseError("Bad Request-Line: bad method", 400, request)
    request = Request(method, parts[1] if len(parts) > 1 else "", lines, keys, b"", raw)
    if len(parts) != 3 or not parts[1]:
        raise ParseError(_request_line_defect(start_line), 400, request)
    version = parts[2]
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        if _VERSION.match(version):
            raise ParseError("Version Not Supported", 505, request)
        raise ParseError("Bad Request-Line: bad SIP version", 400, request)
    request.version = version
    return request


def _request_line_defect(start_line: str) -> str:
    if "  " in start_line or start_line.endswith(" "):
        return "Bad Request-Line: extra spaces (one SP between the elements)"
    if start_line.count(" ") > 2:
        return "Bad Request-Line: whitespace in the Request-URI"
    return "Bad Request-Line: expected METHOD URI SIP/2.0"


# Memos of what a line's text says, for the lines most messages share ("SIP/2.0 200 OK",
# "Content-Length: 0"): a dict hit costs a fraction of splitting and checking the line
# again. Bounded (sip/memo.py), since the text comes from packets.
MEMO_SIZE: Final = 1024
_STATUS_LINES: Final = Memo[str, tuple[int, str, str]](MEMO_SIZE)  # -> status, reason, version
_CONTENT_LENGTHS: Final = Memo[str, int](MEMO_SIZE)  # the whole header line -> its value


def _status_line(start_line: str, lines: list[str], keys: list[str], raw: bytes) -> Response:
    known = _STATUS_LINES.table.get(start_line)
    if known is None:
        known = _STATUS_LINES.put(start_line, _read_status_line(start_line))
    status, reason, version = known
    return Response(status, reason, lines, keys, b"", raw, version, start_line)


def _read_status_line(start_line: str) -> tuple[int, str, str]:
    parts = start_line.split(" ", 2)
    version = parts[0]
    if len(parts) < 2 or (version != SIP_VERSION and version.upper() != SIP_VERSION):
        raise ParseError("Bad Status-Line")
    code = parts[1]
    if len(code) != 3 or not (code.isdigit() and code.isascii()):
        raise ParseError("Bad Status-Line: bad status code")
    status = int(code)
    if not 100 <= status <= 699:
        raise ParseError("Bad Status-Line: bad status code")
    return status, parts[2] if len(parts) == 3 else "", version


def _attach_body(message: Message, data: bytes, body_at: int, stream: bool) -> None:
    keys = message.keys
    length: int | None
    at = index_of(keys, "content-length")  # one scan up to it and one past it
    if at < 0:
        length = None
    elif stands_after(keys, "content-length", at):
        raise ParseError("Multiple Content-Length headers", 400, message)
    else:  # Message.content_length written out: this runs for every packet
        line = message.lines[at]
        length = _CONTENT_LENGTHS.table.get(line)
        if length is None:
            text = line[line.find(":") + 1 :].strip(WS) if "\n" not in line else header_value(line)
            if not (text.isdigit() and text.isascii() and len(text) <= 10):
                raise ParseError("Bad Content-Length header", 400, message)
            length = _CONTENT_LENGTHS.put(line, int(text))
    available = len(data) - body_at
    if length == available:  # the usual case: the body is the rest (empty, mostly)
        if length:
            message.body = data[body_at:]
        return
    if length is None:
        if stream:
            raise ParseError("Missing Content-Length on a stream transport", 400, message)
        length = available
    elif length > available:
        raise ParseError("Content-Length larger than the message", 400, message)
    message.body = data[body_at : body_at + length]
    if body_at + length < len(data):
        message.raw = data[: body_at + length]


def validate_request(request: Request) -> None:
    """The checks of RFC 3261 §8.2 / §16.3 step 1 that need no policy.

    Touches every mandatory header once (so later accessors are cached) and raises
    ParseError with the request attached, so the caller can answer it.
    """
    try:
        uri = request.uri  # 416 for unsupported schemes
        if isinstance(uri, SipUri) and uri.headers:
            raise ParseError("Request-URI must not carry headers")
        request.top_via.params  # noqa: B018 - the branch is needed to answer or forward
        request.from_  # noqa: B018
        request.to  # noqa: B018
        request.call_id  # noqa: B018
        cseq = request.cseq
        if cseq.method != request.method:
            raise ParseError("CSeq method does not match the Request-Line")
        request.max_forwards  # noqa: B018
        request.expires  # noqa: B018
        # Contacts are left to whoever reads them (a registrar, a UA): the stateless LB
        # forwards most requests without needing them, so it does not pay for them here.
    except ParseError as exc:
        exc.message = request
        raise


def validate_response(response: Response) -> None:
    """What a proxy or UAC must be able to read of a response before it acts on it.

    A response that fails is dropped (and counted) by the caller: nobody is answered.
    """
    try:
        response.top_via.params  # noqa: B018
        response.from_  # noqa: B018
        response.to  # noqa: B018
        response.call_id  # noqa: B018
        response.cseq  # noqa: B018
    except ParseError as exc:
        exc.message = response
        raise


# -- streams ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """A CRLFCRLF ping (RFC 5626 §3.5.1): answer with a CRLF pong."""


@dataclass(frozen=True, slots=True)
class KeepAlivePong:
    """A CRLF pong answering our ping."""


StreamItem = bytes | KeepAlivePing | KeepAlivePong
_CONTENT_LENGTH: Final = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)")


class StreamFramer:
    """Cuts a TCP/TLS byte stream into whole messages and keep-alives.

    Errors are fatal for the connection: ``feed`` raises ParseError (with the broken
    request attached when there is one) and the caller answers, then closes.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[StreamItem]:
        self._buffer += data
        items: list[StreamItem] = []
        while True:
            item = self._next()
            if item is None:
                return items
            items.append(item)

    def _next(self) -> StreamItem | None:
        buffer = self._buffer
        if buffer.startswith(b"\r\n"):
            if buffer.startswith(b"\r\n\r\n"):
                del buffer[:4]
                return KeepAlivePing()
            del buffer[:2]
            return KeepAlivePong()
        end = buffer.find(b"\r\n\r\n")
        if end == -1:
            if len(buffer) > self.max_size:
                raise ParseError("Message Too Large", 513)
            return None
        head = bytes(buffer[:end])
        found = _CONTENT_LENGTH.findall(head)
        if len(found) != 1:
            reason = (
                "Missing Content-Length on a stream transport"
                if not found
                else "Multiple Content-Length headers"
            )
            raise self._framing_error(head, reason, 400)
        try:
            length = parse_int(found[0].decode("latin-1"), "Content-Length")
        except ParseError as exc:
            raise self._framing_error(head, exc.reason, 400) from None
        total = end + 4 + length
        if total > self.max_size:
            raise self._framing_error(head, "Message Too Large", 513)
        if len(buffer) < total:
            return None
        message = bytes(buffer[:total])
        del buffer[:total]
        return message

    @staticmethod
    def _framing_error(head: bytes, reason: str, status: int) -> ParseError:
        try:
            message = _parse_head(head.decode("latin-1").split("\r\n"), head + b"\r\n\r\n")
        except ParseError:
            message = None
        return ParseError(reason, status, message)


def is_keepalive(data: bytes) -> bool:
    """A UDP datagram that is only CRLFs (RFC 5626 ping) or whitespace padding."""
    return not data.strip(b"\r\n \t\x00")


__all__ = [
    "DEFAULT_MAX_SIZE",
    "KeepAlivePing",
    "KeepAlivePong",
    "StreamFramer",
    "header_key",
    "is_keepalive",
    "parse_message",
    "validate_request",
    "validate_response",
]
