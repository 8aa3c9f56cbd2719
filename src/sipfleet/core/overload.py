"""Overload detection (DESIGN §6): how much is waiting in the socket buffers, and how
late the event loop runs.

When more arrives than the proxy can handle, datagrams wait in the kernel's receive
buffer (megabytes: seconds of work), the callers retransmit, and the copies join the
queue. The event loop itself stays punctual while it drains the buffer in batches,
so the buffer's fill (``SO_MEMINFO``, Linux) is the signal; loop lag is the fallback.
While either is high the proxy refuses new requests with a stateless 503 (tens of
microseconds each) and keeps serving what is under way (responses, ACK, BYE, CANCEL):
it finishes the calls it started instead of starting more than it can finish. It
accepts new requests again after ``calm`` consecutive calm checks.
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

log = logging.getLogger(__name__)

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux; index 0 is the receive queue
_MEMINFO = struct.Struct("9I")


@dataclass(slots=True)
class OverloadMonitor:
    """The decision, without a clock or sockets: feed it each check's measurements."""

    enter_backlog: int = 1 << 20  # bytes (kernel accounting) queued: ~450 datagrams
    leave_backlog: int = 128 << 10
    enter_lag: float = 0.1  # seconds the loop is late
    leave_lag: float = 0.02
    calm: int = 3  # calm checks in a row before new requests are accepted again
    overloaded: bool = False
    episodes: int = 0
    _calm_checks: int = 0

    def observe(self, lag: float, backlog: int) -> bool:
        """Record one check; returns whether new requests should be refused now."""
        if lag >= self.enter_lag or backlog >= self.enter_backlog:
            if not self.overloaded:
                self.episodes += 1
                log.warning(
                    "overloaded (%d KB waiting, loop %.0f ms late): new requests get 503",
                    backlog >> 10,
                    lag * 1e3,
                )
            self.overloaded = True
            self._calm_checks = 0
        elif self.overloaded:
            calm = lag < self.leave_lag and backlog < self.leave_backlog
            self._calm_checks = self._calm_checks + 1 if calm else 0
            if self._calm_checks >= self.calm:
                self.overloaded = False
                log.info("overload over: accepting new requests again")
        return self.overloaded


def receive_backlog(sockets: Sequence[socket.socket]) -> Callable[[], int]:
    """Bytes waiting in the receive buffers of ``sockets`` (0 where not measurable)."""

    def backlog() -> int:
        total = 0
        for sock in sockets:
            with contextlib.suppress(OSError, struct.error):
                total += _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0]
        return total

    return backlog


def no_backlog() -> int:
    return 0


async def watch(
    monitor: OverloadMonitor, backlog: Callable[[], int] = no_backlog, period: float = 0.05
) -> None:
    """Check every ``period`` seconds, forever."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(period)
        lag = max(0.0, time.monotonic() - started - period)
        monitor.observe(lag, backlog())


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
