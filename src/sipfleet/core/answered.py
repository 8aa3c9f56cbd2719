"""Absorbing retransmissions of a stateless UAS (registrar), in bounded memory.

A full server transaction keeps the request and its answer for Timer J (32 s over UDP);
at thousands of REGISTERs a second that is hundreds of megabytes. A registrar's answer is
mostly idempotent (a repeated CSeq changes nothing and gets the current bindings), so it
is enough to absorb the copies that arrive while the first is still being worked on and
to answer the ones that arrive after it from what was sent: the answer's bytes, under a
compact key (one short string), kept by time, never by a count that a flood cycles.

One kind of answer is not idempotent: that of a request whose digest credentials were
accepted, because accepting them used up their nonce-count (sip/auth.py). Worked on
again, the retransmission would be refused as a replay and its client, already
registered, would get a false 401. Those answers are kept for the client's whole
retransmission window (Timer F, 64 x T1); the others (challenges, 503s, unauthenticated
REGISTERs) only briefly, since working on them again gives the same outcome.

Memory: an entry costs its answer's bytes and about 165 bytes more (key, dict slot, its
place in its second's list; measured with tracemalloc: 650 bytes in all for a 200 OK
relayed by the LB). The kept tier fills only as fast as credentials are accepted, which
is the rate the process serves: at 4,000 a second, 132,000 entries, about 85 MB. Each tier
is also capped in entries (oldest second dropped first), a backstop for rates above what
a registrar process can serve (docs/operations.md, "Registrar: stalled storage and the
answer cache").
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Request

Key = str

# A client retransmits a non-INVITE for 64 x T1 = 32 s (Timer F), the last copy 4 s
# (T2) after the one before it.
RETRANSMISSION_WINDOW = 32.0
BRIEF = 4.0  # seconds: copies that crossed the answer on the way, or one T2 after it


class Seen(Enum):
    NEW = "new"
    IN_PROGRESS = "in-progress"


def request_key(request: Request) -> Key | None:
    """§17.2.3 matching: branch, sent-by and method (None for pre-RFC 3261 branches),
    as one string: a tuple of four objects would cost three times the memory."""
    try:
        via = request.top_via
    except ParseError:
        return None
    if not via.is_rfc3261:
        return None
    return f"{via.branch or ''} {via.host}:{via.port} {request.method}"


class _Tier:
    """Answers kept for at least ``keep`` seconds, dropped a whole second at a time: a
    float per entry would cost more than the entry's key (24 bytes and a tuple)."""

    __slots__ = ("_seconds", "answers", "capacity", "keep")

    def __init__(self, keep: float, capacity: int) -> None:
        self.keep = keep
        self.capacity = capacity
        self.answers: dict[Key, bytes] = {}
        self._seconds: deque[tuple[int, list[Key]]] = deque()  # oldest first

    def put(self, key: Key, answer: bytes, now: float) -> None:
        second = int(now)
        if not self._seconds or self._seconds[-1][0] != second:
            self._seconds.append((second, []))
        self._seconds[-1][1].append(key)
        self.answers[key] = answer
        if len(self.answers) > self.capacity:
            self._drop_oldest_second()

    def expire(self, now: float) -> None:
        """Forget the seconds whose every entry is at least ``keep`` old."""
        seconds = self._seconds
        while seconds and now - (seconds[0][0] + 1) >= self.keep:
            self._drop_oldest_second()

    def _drop_oldest_second(self) -> None:
        _, keys = self._seconds.popleft()
        answers = self.answers
        for key in keys:
            answers.pop(key, None)  # moved to the other tier meanwhile: not here any more


class AnsweredRequests:
    """The requests being worked on, and the answers sent, by key (sans-IO: ``now`` is
    passed in, any monotonic clock in seconds)."""

    def __init__(
        self,
        *,
        brief: float = BRIEF,
        window: float = RETRANSMISSION_WINDOW,
        brief_capacity: int = 100_000,
        window_capacity: int = 250_000,
    ) -> None:
        """``brief``: seconds an ordinary answer is kept; ``window``: seconds an answer
        that used up a nonce-count is kept. The capacities (entries) only bound memory
        above the rates a registrar process can serve (docs/operations.md)."""
        self._working: set[Key] = set()
        self._brief = _Tier(brief, brief_capacity)
        self._kept = _Tier(window, window_capacity)

    def begin(self, key: Key, now: float) -> Seen | bytes:
        """NEW: go ahead (call ``finish`` later). IN_PROGRESS: a copy of one being worked
        on, drop it. bytes: answered already, send these again."""
        if key in self._working:
            return Seen.IN_PROGRESS
        self._brief.expire(now)
        self._kept.expire(now)
        answer = self._kept.answers.get(key) or self._brief.answers.get(key)
        if answer is not None:
            return answer
        self._working.add(key)
        return Seen.NEW

    def finish(self, key: Key, answer: bytes | None, now: float, *, spent: bool = False) -> None:
        """The request is done: ``answer`` was sent (None: nothing was, forget it).
        ``spent``: its credentials were accepted, so working on a copy would be refused
        as a replay: keep the answer for the whole retransmission window."""
        self._working.discard(key)
        if answer is not None:
            (self._kept if spent else self._brief).put(key, answer, now)

    def spent(self, key: Key, now: float) -> None:
        """A request answered already (503 at a deadline) has used up its nonce-count
        since: keep its answer for the whole window after all."""
        answer = self._brief.answers.pop(key, None)
        if answer is not None:
            self._kept.put(key, answer, now)

    @property
    def in_progress(self) -> int:
        return len(self._working)

    @property
    def kept(self) -> tuple[int, int]:
        """Answers held: (brief, for the whole window)."""
        return len(self._brief.answers), len(self._kept.answers)
