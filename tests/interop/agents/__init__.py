"""Drivers for real SIP user agents (baresip, Linphone, PJSIP) run headless in the lab.

Each driver starts its client inside a namespace of the lab, with a configuration
directory of its own, no sound card (null or file audio), and reads what the client
prints so tests can wait on events (registered, call established, ...) instead of
sleeping. Everything a driver starts is stopped by PID.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
ANSI = re.compile(r"\x1b\[[0-9;]*[]A-Za-z]")  # colours; the console bell's "ESC[10;1000]"


class AgentError(AssertionError):
    """A client did not do what the test waited for; carries the client's output."""


class Output:
    """What a client prints, gathered by a reader thread, searchable while it grows."""

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._text = ""
        self._cond = threading.Condition()
        self.closed = False

    def feed(self, data: str) -> None:
        with self._cond:
            self._chunks.append(data)
            self._text = ""
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return self._joined()

    def _joined(self) -> str:
        if len(self._chunks) > 1 or not self._text:
            self._text = ANSI.sub("", "".join(self._chunks))
            self._chunks = [self._text]
        return self._text

    def mark(self) -> int:
        """A position: ``wait_for(..., since=mark)`` looks only at what came after it."""
        return len(self.text())

    def wait_for(
        self, pattern: str, timeout: float, *, since: int = 0, flags: int = 0
    ) -> re.Match[str] | None:
        """The first match of ``pattern`` after ``since``, waiting up to ``timeout`` s for it
        (None when it did not come, or the client exited first)."""
        regex = re.compile(pattern, flags)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = regex.search(self._joined(), since)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self._cond.wait(min(left, 1.0))

    def wait_until(self, test: Callable[[str], T | None], timeout: float) -> T | None:
        """The first non-None ``test(text)``, waiting up to ``timeout`` s as the text grows."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = test(self._joined())
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self._cond.wait(min(left, 1.0))


@dataclass
class SipTrace:
    """One SIP message a client printed in its trace."""

    sent: bool
    transport: str
    start_line: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), [])
        return values[0] if values else ""

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method of a response."""
        if self.start_line.startswith("SIP/2.0"):
            return self.header("cseq").split()[-1] if self.header("cseq") else ""
        return self.start_line.split(" ", 1)[0]

    @property
    def status(self) -> int | None:
        if self.start_line.startswith("SIP/2.0"):
            return int(self.start_line.split()[1])
        return None


COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
}


def parse_message(text: str, *, sent: bool, transport: str) -> SipTrace:
    """A SIP message's text (headers, blank line, body) as a SipTrace."""
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    trace = SipTrace(sent=sent, transport=transport, start_line=lines[0].strip())
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        trace.headers.setdefault(COMPACT.get(key, key), []).append(value.strip())
    length = trace.header("content-length")
    trace.body = body[: int(length)] if length.isdigit() else body
    return trace


def sdp_media(body: str) -> list[str]:
    """The m= lines of an SDP body."""
    return [line for line in body.splitlines() if line.startswith("m=")]


def sdp_direction(body: str) -> str:
    """The stream direction of an SDP body's first medium (sendrecv when none is given)."""
    for line in body.splitlines():
        if line.strip() in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return line.strip()[2:]
    return "sendrecv"
