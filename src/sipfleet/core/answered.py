"""Absorbing retransmissions of a stateless UAS (registrar), in bounded memory.

A full server transaction keeps the request and its answer for Timer J (32 s over UDP);
at thousands of REGISTERs a second that is hundreds of megabytes. A registrar's answer is
idempotent anyway (a repeated CSeq changes nothing and gets the current bindings), so it
is enough to absorb the copies that arrive while the first is still being worked on and
to answer the ones that arrive shortly after from a small, bounded cache.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum

from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Request

Key = tuple[str, str, int | None, str]


class Seen(Enum):
    NEW = "new"
    IN_PROGRESS = "in-progress"


def request_key(request: Request) -> Key | None:
    """§17.2.3 matching: branch, sent-by and method (None for pre-RFC 3261 branches)."""
    try:
        via = request.top_via
    except ParseError:
        return None
    if not via.is_rfc3261:
        return None
    return (via.branch or "", via.host, via.port, request.method)


class AnsweredRequests:
    def __init__(self, capacity: int = 20_000, keep_seconds: float = 8.0) -> None:
        self.capacity = capacity
        self.keep_seconds = keep_seconds
        self._working: set[Key] = set()
        self._answers: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()

    def begin(self, key: Key, now: float) -> Seen | bytes:
        """NEW: go ahead (call ``finish`` later). IN_PROGRESS: a copy of one being worked
        on, drop it. bytes: answered already, send these again."""
        if key in self._working:
            return Seen.IN_PROGRESS
        answer = self._answers.get(key)
        if answer is not None and now - answer[0] <= self.keep_seconds:
            return answer[1]
        self._working.add(key)
        return Seen.NEW

    def finish(self, key: Key, answer: bytes | None, now: float) -> None:
        self._working.discard(key)
        if answer is None:
            return
        self._answers[key] = (now, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)
        self._expire(now)

    def _expire(self, now: float) -> None:
        answers = self._answers
        while answers:
            oldest = next(iter(answers.values()))
            if now - oldest[0] <= self.keep_seconds:
                return
            answers.popitem(last=False)

    @property
    def in_progress(self) -> int:
        return len(self._working)
