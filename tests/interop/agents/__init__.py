"""Drivers for real SIP user agents (baresip, Linphone, PJSIP) run headless in the lab.

Each driver starts its client inside a namespace of the lab, with a directory of its own,
no sound card (null or file audio), and reads what the client prints on a thread so tests
can wait on events (registered, call established, ...) instead of sleeping. Everything a
driver starts is stopped by PID.

``Agent`` is what the three have in common: the process, its reader thread and log, the
stop sequence, marks (``since``), and the SIP trace (``trace``, ``requests``,
``responses``, ``wait_message``) over what the client printed. A driver says how to start
its client, how to parse its trace and how the client reports calls and registrations.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sized
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Generic, Self, TypeVar

from tests.interop.lab import Namespace

T = TypeVar("T")
S = TypeVar("S", bound=Sized)
ANSI = re.compile(r"\x1b\[[0-9;]*[]A-Za-z]")  # colours; the console bell's "ESC[10;1000]"
CONTENT_LENGTH = re.compile(r"^(?:Content-Length|l)\s*:\s*(\d+)", re.M | re.I)


class AgentError(AssertionError):
    """A client did not do what the test waited for; carries the client's output."""


class Feed(ABC, Generic[S]):
    """What a client reports, gathered by a reader thread, waited on while it grows."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.closed = False

    def feed(self, data: str) -> None:
        with self._cond:
            self._add(data)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_until(self, test: Callable[[S], T | None], timeout: float) -> T | None:
        """The first non-None ``test(everything so far)``, waiting up to ``timeout`` s as it
        grows (None when it did not come, or the client exited first)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = test(self._snapshot())
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self._cond.wait(min(left, 1.0))

    def view(self, read: Callable[[S], T]) -> T:
        """``read(everything so far)``, while nothing is added."""
        with self._cond:
            return read(self._snapshot())

    def mark(self) -> int:
        """A position: what came after it is what ``since=mark`` looks at."""
        return self.view(len)

    @abstractmethod
    def tail(self, since: int) -> str:
        """The end of what came after ``since``, for an error message."""

    @abstractmethod
    def _add(self, data: str) -> None:
        """Take in ``data`` (called with the lock held)."""

    @abstractmethod
    def _snapshot(self) -> S:
        """Everything so far (called with the lock held)."""


class Output(Feed[str]):
    """What a client prints (colours removed), searchable while it grows."""

    def __init__(self, tail_chars: int = 6000) -> None:
        super().__init__()
        self._chunks: list[str] = []
        self._text = ""
        self.tail_chars = tail_chars

    def _add(self, data: str) -> None:
        self._chunks.append(data)
        self._text = ""

    def _snapshot(self) -> str:
        if len(self._chunks) > 1 or not self._text:
            self._text = ANSI.sub("", "".join(self._chunks))
            self._chunks = [self._text]
        return self._text

    def text(self) -> str:
        return self.view(str)

    def tail(self, since: int) -> str:
        return self.text()[since:][-self.tail_chars :]

    def wait_for(
        self, pattern: str, timeout: float, *, since: int = 0, flags: int = 0
    ) -> re.Match[str] | None:
        """The first match of ``pattern`` after ``since``, waiting up to ``timeout`` s for it
        (None when it did not come, or the client exited first)."""
        regex = re.compile(pattern, flags)
        return self.wait_until(lambda text: regex.search(text, since), timeout)


class Events(Feed[list[dict[str, Any]]]):
    """A client's events, one JSON object a line (other lines are passed over)."""

    def __init__(self) -> None:
        super().__init__()
        self._events: list[dict[str, Any]] = []
        self._partial = ""

    def _add(self, data: str) -> None:
        *lines, self._partial = (self._partial + data).split("\n")
        for line in lines:
            with suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self._events.append(event)

    def _snapshot(self) -> list[dict[str, Any]]:
        return self._events

    def since(self, since: int) -> list[dict[str, Any]]:
        return self.view(lambda events: events[since:])

    def tail(self, since: int) -> str:
        return "\n".join(json.dumps(e)[:400] for e in self.since(since)[-40:])


class Agent(ABC, Generic[S]):
    """One client process for ``user@domain`` in ``ns``, registering through ``proxy``.

    A driver sets ``NAME`` (for messages), ``QUIT`` (the line that makes its client
    unregister and exit), ``COMMANDS`` and its timeouts, starts its client with ``_spawn``
    and parses its trace in ``_messages``."""

    NAME: ClassVar[str]
    QUIT: ClassVar[str]
    COMMANDS: ClassVar[Mapping[str, str]]
    RTP_BASE: ClassVar[int]
    START_TIMEOUT: ClassVar[float] = 20.0
    EVENT_TIMEOUT: ClassVar[float] = 10.0
    STOP_TIMEOUT: ClassVar[float] = 8.0

    def __init__(
        self,
        ns: Namespace,
        workdir: Path,
        user: str,
        domain: str,
        password: str,
        *,
        transport: str = "udp",
        proxy: tuple[str, int] = ("127.0.0.1", 5060),
        regint: int = 600,
        rtp_base: int | None = None,
        trusted_ca: Path | None = None,
    ) -> None:
        self.ns = ns
        self.trusted_ca = trusted_ca  # over TLS: the certificate it trusts (the LB's)
        self.user, self.domain, self.password = user, domain, password
        self.aor = f"sip:{user}@{domain}"
        self.transport = transport
        self.proxy = proxy
        self.regint = regint
        self.rtp_base = self.RTP_BASE if rtp_base is None else rtp_base
        self.dir = workdir / f"{self.NAME}-{user}-{transport}"
        self.log_path = self.dir / "output.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._feed: Feed[S] = self._new_feed()
        self._reader: threading.Thread | None = None
        self._log: IO[str] | None = None

    # -- the parts a driver gives ----------------------------------------------------------

    @abstractmethod
    def _new_feed(self) -> Feed[S]:
        """Where what the client reports is gathered."""

    @abstractmethod
    def start(self) -> Self:
        """Write the client's configuration, start it, and wait until it is ready."""

    @abstractmethod
    def _messages(self, everything: S, since: int) -> list[SipTrace]:
        """The SIP messages of the trace in ``everything`` after ``since``, in order."""

    @classmethod
    def prepare_namespace(cls, ns: Namespace) -> None:
        """What ``ns`` needs before this client can run there (nothing by default)."""

    def trouble(self) -> str | None:
        """What went wrong in the client that a test did not wait on (None: nothing)."""
        return None

    # -- process ---------------------------------------------------------------------------

    def _spawn(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        stderr_to_log: bool = False,
    ) -> None:
        """Start ``argv`` in the namespace, its standard output read on a thread into the
        feed and the log (its standard error too, or only into the log)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.process = self.ns.popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if stderr_to_log else subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.NAME}-{self.user}")
        self._reader.daemon = True
        self._reader.start()

    def _read(self) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        fd = process.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            data = os.read(fd, 65536)
            text = decoder.decode(data, final=not data)
            if text:
                log = self._log
                if log is not None:
                    log.write(text)
                    log.flush()
                self._feed.feed(text)
            if not data:
                break
        self._feed.close()

    def _write(self, line: str) -> None:
        process = self.process
        assert process is not None
        assert process.stdin is not None
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()

    def stop(self) -> None:
        """``QUIT`` (which unregisters), then SIGTERM and SIGKILL by PID if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                self._write(self.QUIT)
                process.wait(timeout=self.STOP_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                process.terminate()
                try:
                    process.wait(timeout=self.STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=self.STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(timeout=self.STOP_TIMEOUT)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with suppress(OSError):  # a pipe it no longer reads
                    stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- waiting ---------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in what the client reported: ``since=mark`` looks only after it."""
        return self._feed.mark()

    def tail(self, since: int = 0) -> str:
        """The end of what the client reported after ``since``."""
        return self._feed.tail(since)

    def _wait(self, test: Callable[[S], T | None], what: str, timeout: float, since: int) -> T:
        found = self._feed.wait_until(test, timeout)
        if found is None:
            raise AgentError(
                f"{self.NAME} {self.aor}: no {what} within {timeout} s; output:\n{self.tail(since)}"
            )
        return found

    # -- what every client does ------------------------------------------------------------

    @abstractmethod
    def _do(self, action: str, **args: str) -> None:
        """Tell the client to do ``action`` (a key of its ``COMMANDS``: dial ``uri``,
        accept, hangup, hold, unregister)."""

    def dial(self, uri: str) -> int:
        """Call ``uri``; returns where the call's part of the output begins."""
        at = self.mark()
        self._do("dial", uri=uri)
        return at

    def accept(self) -> None:
        self._do("accept")

    def hangup(self) -> None:
        self._do("hangup")

    def hold(self) -> None:
        self._do("hold")

    def unregister(self) -> int:
        """Unregister (REGISTER with expires 0); returns where that begins."""
        at = self.mark()
        self._do("unregister")
        return at

    # what the client reports (each returns once the client reported it, or raises
    # AgentError with the client's output after ``since``)

    @abstractmethod
    def wait_registered(self, timeout: float | None = None, *, since: int = 0) -> object: ...

    @abstractmethod
    def wait_register_failed(self, timeout: float | None = None, *, since: int = 0) -> object: ...

    @abstractmethod
    def wait_incoming(self, timeout: float | None = None, *, since: int = 0) -> object: ...

    @abstractmethod
    def wait_established(self, timeout: float | None = None, *, since: int = 0) -> object: ...

    @abstractmethod
    def wait_closed(self, timeout: float | None = None, *, since: int = 0) -> object: ...

    @abstractmethod
    def was_established(self, *, since: int = 0) -> bool:
        """Whether the client reported a call established after ``since``."""

    def wait_held(self, *, since: int = 0) -> None:
        """The client's own report that it put the call on hold, where it gives one."""

    def wait_held_by_remote(self, *, since: int = 0) -> None:
        """The client's own report that the other side held the call, where it gives one."""

    def wait_unregistered(self, timeout: float | None = None, *, since: int = 0) -> object:
        """The end of the registration: by default the registrar's 200 in the trace."""
        return self.wait_message("REGISTER", sent=False, status=200, since=since, timeout=timeout)

    # -- SIP trace -------------------------------------------------------------------------

    def trace(self, *, since: int = 0) -> list[SipTrace]:
        """Every SIP message of the trace after ``since``, in order."""
        return self._feed.view(lambda everything: self._messages(everything, since))

    def requests(self, method: str, *, sent: bool, since: int = 0) -> list[SipTrace]:
        return [m for m in self.trace(since=since) if m.is_request(method, sent=sent)]

    def responses(self, method: str, *, sent: bool, since: int = 0) -> list[SipTrace]:
        return [m for m in self.trace(since=since) if m.is_response(method, sent=sent, status=None)]

    def wait_message(
        self,
        method: str,
        *,
        sent: bool,
        status: int | None = None,
        since: int = 0,
        timeout: float | None = None,
    ) -> SipTrace:
        """The first ``method`` request (or, with ``status``, response to it; 0: any final
        one) sent or received after ``since``, once the trace shows all of it."""

        def find(everything: S) -> SipTrace | None:
            for message in self._messages(everything, since):
                if (status is None and message.is_request(method, sent=sent)) or (
                    status is not None and message.is_response(method, sent=sent, status=status)
                ):
                    return message
            return None

        what = method if status is None else f"{status or 'final'} response to {method}"
        what += " sent" if sent else " received"
        return self._wait(find, what, timeout or self.EVENT_TIMEOUT, since)


class TextAgent(Agent[str]):
    """A client driven through its console: lines on standard input, its output (with its
    SIP trace) read as text."""

    TAIL_CHARS: ClassVar[int] = 6000

    def _new_feed(self) -> Output:
        return Output(self.TAIL_CHARS)

    @property
    def output(self) -> Output:
        assert isinstance(self._feed, Output)
        return self._feed

    def command(self, line: str) -> None:
        self._write(line)

    def _do(self, action: str, **args: str) -> None:
        """The console line of ``COMMANDS[action]``, with ``{aor}`` and ``args`` filled in."""
        self.command(self.COMMANDS[action].format(aor=self.aor, **args))

    def resume(self) -> None:
        self._do("resume")

    def expect(self, pattern: str, timeout: float | None = None, *, since: int = 0) -> str:
        """Wait for ``pattern`` in the output after ``since``; fail with the output's tail."""
        regex = re.compile(pattern)
        timeout = timeout or self.EVENT_TIMEOUT
        found = self._wait(lambda text: regex.search(text, since), repr(pattern), timeout, since)
        return found.group(0)

    def saw(self, pattern: str, *, since: int = 0) -> bool:
        return re.search(pattern, self.output.text()[since:]) is not None

    def _messages(self, everything: str, since: int) -> list[SipTrace]:
        return self.parse_trace(everything[since:])

    @abstractmethod
    def parse_trace(self, text: str) -> list[SipTrace]:
        """Every SIP message of the trace in ``text``, in order."""


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

    def is_request(self, method: str, *, sent: bool) -> bool:
        return self.status is None and self.method == method and self.sent == sent

    def is_response(self, method: str, *, sent: bool, status: int | None) -> bool:
        """A response to ``method``: any (``status`` None), a final one (0), or ``status``."""
        code = self.status
        if code is None or self.method != method or self.sent != sent:
            return False
        return status is None or code == status or (status == 0 and code >= 200)


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


def message_end(data: str) -> int | None:
    """Where the SIP message at the start of ``data`` ends (after its body, as long as its
    Content-Length says), or None while ``data`` does not hold all of it."""
    header_end = data.find("\r\n\r\n")
    if header_end < 0:
        return None
    length = CONTENT_LENGTH.search(data[:header_end])
    end = header_end + 4 + (int(length.group(1)) if length else 0)
    return end if len(data) >= end else None


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
