"""Overload detection (DESIGN §6): how much is waiting in the socket buffers, and how
late the event loop runs, over a window of time.

When more arrives than the proxy can handle, datagrams wait in the kernel's receive
buffer (megabytes: seconds of work), the callers retransmit, and the copies join the
queue. The event loop itself stays punctual while it drains the buffer in batches,
so the buffer's fill (``SO_MEMINFO``, Linux) is the signal; loop lag is the fallback.

A pause is not overload: after the loop stood still for a moment (a slow system call,
a page fault storm, the host's scheduler) the buffer holds a burst and the loop is late
once, then the backlog shrinks as the loop catches up. Overload is pressure that lasts:
the backlog or the lag above its mark on every check for ``sustain`` seconds, with the
backlog not shrinking by a quarter over that window (a backlog that drains is being
caught up with). While overloaded the proxy refuses new requests with a stateless 503
(tens of microseconds each) and keeps serving what is under way (responses, ACK, BYE,
CANCEL): it finishes the calls it started instead of starting more than it can finish.
It accepts new requests again after ``calm`` consecutive calm checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sipfleet.sip.message import Request

log = logging.getLogger(__name__)

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux; index 0 is the receive queue
_MEMINFO = struct.Struct("9I")


@dataclass(slots=True)
class OverloadMonitor:
    """The decision, without a clock or sockets: feed it each check's time and
    measurements."""

    enter_backlog: int = 1 << 20  # bytes (kernel accounting) queued: ~450 datagrams
    leave_backlog: int = 128 << 10
    enter_lag: float = 0.1  # seconds the loop is late
    leave_lag: float = 0.02
    sustain: float = 0.5  # seconds of pressure on every check before it counts
    calm: int = 3  # calm checks in a row before new requests are accepted again
    overloaded: bool = False
    episodes: int = 0
    _calm_checks: int = 0
    _pressed_since: float | None = None
    _backlog_then: int = 0  # the backlog when the current window began

    def observe(self, now: float, lag: float, backlog: int) -> bool:
        """Record one check at time ``now``; returns whether new requests should be
        refused now."""
        pressed = lag >= self.enter_lag or backlog >= self.enter_backlog
        if self.overloaded:
            self._settle(lag, backlog)
        elif not pressed:
            self._pressed_since = None
        elif self._pressed_since is None:
            self._pressed_since, self._backlog_then = now, backlog
        elif now - self._pressed_since >= self.sustain:
            draining = self._backlog_then > 0 and backlog * 4 <= self._backlog_then * 3
            if draining:  # a pause's burst being caught up with: watch the next window
                self._pressed_since, self._backlog_then = now, backlog
            else:
                self._enter(lag, backlog)
        return self.overloaded

    def _enter(self, lag: float, backlog: int) -> None:
        self.overloaded = True
        self.episodes += 1
        self._calm_checks = 0
        self._pressed_since = None
        log.warning(
            "overloaded (%d KB waiting, loop %.0f ms late, for %.1f s): new requests get 503",
            backlog >> 10,
            lag * 1e3,
            self.sustain,
        )

    def _settle(self, lag: float, backlog: int) -> None:
        calm = lag < self.leave_lag and backlog < self.leave_backlog
        self._calm_checks = self._calm_checks + 1 if calm else 0
        if self._calm_checks >= self.calm:
            self.overloaded = False
            log.info("overload over: accepting new requests again")


def receive_backlog(sockets: Sequence[socket.socket]) -> Callable[[], int]:
    """Bytes waiting in the receive buffers of the datagram sockets among ``sockets``
    (0 where not measurable; a stream socket's queue is the peer's to pace)."""
    datagram = [sock for sock in sockets if sock.type == socket.SOCK_DGRAM]
    if not datagram:
        return no_backlog

    def backlog() -> int:
        total = 0
        for sock in datagram:
            with contextlib.suppress(OSError, struct.error):
                total += _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0]
        return total

    return backlog


def no_backlog() -> int:
    return 0


def answers_a_challenge(request: Request) -> bool:
    """It carries credentials: the answer to a 401/407 the cluster already sent. Shed
    last: refused, the exchange already paid for is wasted and starts again (digest
    registrations at twice the maximum through the LB: goodput 69-77 % of the maximum
    when shed alike, 82-93 % when shed last; docs/benchmarks.md)."""
    keys = request.keys
    return "authorization" in keys or "proxy-authorization" in keys


async def watch(
    monitor: OverloadMonitor, backlog: Callable[[], int] = no_backlog, period: float = 0.05
) -> None:
    """Check every ``period`` seconds, forever."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(period)
        lag = max(0.0, time.monotonic() - started - period)
        monitor.observe(time.monotonic(), lag, backlog())


class AnswerBudget:
    """How many overload answers (503) a process may still send: earned by the requests
    it serves, ``per_served`` each, at most ``burst`` saved up.

    Under load a 503 costs a REGISTER-serving process about a third of a served request
    (read, parse, answer, send). At twice the capacity, answering every excess request
    took more than half the CPU and goodput fell to 43 % of the maximum (measured). With
    the answers paid for by the work served, shedding can never take more than a fixed
    share of the process; what the budget does not cover is dropped unanswered, as a full
    socket buffer would drop it, and comes back as a retransmission.
    """

    def __init__(self, per_served: float = 0.5, burst: float = 200.0) -> None:
        self.per_served = per_served
        self.burst = burst
        self.tokens = burst

    def served(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.per_served)

    def take(self) -> bool:
        """True: answer this one with 503 (and spend it); False: drop it."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
