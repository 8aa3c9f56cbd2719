"""Garbage collection for a long-running role: young generation only, full sweeps when quiet.

A proxy keeps every transaction for up to 32 s (Timers L, M, J over UDP): at 1,200 calls
a second its heap holds millions of live objects. CPython's collector walks a whole
generation at a time, and nothing in a call needs it: transactions, calls, branches and
timers hold no reference cycles (``core/proxy/core.py``; tests/core/proxy and
tests/roles check it), so reference counting frees them the moment they end. What the
collector walks is then all live, and every walk is a pause: sweeping the young
generations every 5 s paused the proxy 180-230 ms at 1,200 calls/s, long enough for its
overload shedding to refuse calls (measured by the anchor harness).

So, after start-up:

- what start-up made is frozen (``gc.freeze``): never walked again;
- only generation 0 is collected automatically, by allocation count as CPython does.
  It holds only what was allocated since the last walk and is still alive, so a walk
  is short (tens of microseconds); in a steady state allocations and frees balance and
  it hardly runs. What survives moves to generation 1 and is not walked again: it is
  freed by reference counting when it ends, like everything else;
- the older generations, where a cycle from a library (an exception kept with its
  traceback, a driver's future) would wait, are swept whole only when the role is
  quiet (``quiet()``: little in flight, so little to walk), at most every
  ``full_interval`` seconds; if it is never quiet, after ``forced_interval`` anyway.
  Each full sweep logs what it found and how long it took.

Every collection's duration is recorded (``PauseRecorder``); the role logs a summary
when it stops, which bench/call_bench.py reads.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 1_000  # net allocations of tracked objects between generation-0 walks
NEVER = 1 << 30  # a threshold the older generations' counters never reach
CHECK_INTERVAL_S = 10.0
FULL_INTERVAL_S = 600.0
FORCED_INTERVAL_S = 6 * 3600.0
LONG_PAUSE_S = 0.05  # a collection this long is worth a warning
# upper bounds of the pause histogram's buckets, in seconds
PAUSE_BOUNDS = tuple(b * 1e-6 for b in (50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5))


@dataclass(slots=True)
class PauseRecorder:
    """Durations of collections in a fixed histogram: bounded memory for a process that
    runs for months. A percentile is reported as its bucket's upper bound."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(PAUSE_BOUNDS) + 1))
    longest: float = 0.0
    total: float = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(PAUSE_BOUNDS, seconds)] += 1
        self.total += seconds
        self.longest = max(self.longest, seconds)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def percentile(self, fraction: float) -> float:
        """The smallest bucket bound with at least ``fraction`` of the pauses at or below
        it (the longest pause for the open top bucket; 0 with no pauses)."""
        wanted = fraction * self.count
        seen = 0
        for bound, count in zip((*PAUSE_BOUNDS, self.longest), self.counts, strict=True):
            seen += count
            if count and seen >= wanted:
                return min(bound, self.longest)
        return 0.0

    def summary(self) -> str:
        return (
            f"{self.count} collections, p50 <= {self.percentile(0.5) * 1e3:.2f} ms, "
            f"p99.9 <= {self.percentile(0.999) * 1e3:.2f} ms, "
            f"max {self.longest * 1e3:.2f} ms, total {self.total:.3f} s"
        )


@dataclass
class Collector:
    """The policy above for one process; ``install`` it once start-up is over."""

    quiet: Callable[[], bool] = lambda: True
    full_interval: float = FULL_INTERVAL_S
    forced_interval: float = FORCED_INTERVAL_S
    pauses: PauseRecorder = field(default_factory=PauseRecorder)
    full_sweeps: int = 0
    _started: float = 0.0
    _last_full: float = 0.0
    _thresholds: tuple[int, int, int] = (700, 10, 10)  # what install found

    def install(self) -> None:
        self._thresholds = gc.get_threshold()
        gc.collect()  # start-up's garbage goes now, not into the frozen set
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)
        gc.callbacks.append(self._timed)
        gc.enable()
        self._last_full = time.monotonic()

    def uninstall(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        gc.unfreeze()
        gc.set_threshold(*self._thresholds)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.pauses.record(took)
        if took >= LONG_PAUSE_S and info.get("generation", 0) < 2:
            log.warning(
                "garbage collection (generation %s) took %.0f ms", info["generation"], took * 1e3
            )

    def sweep_due(self, now: float) -> bool:
        since = now - self._last_full
        return since >= self.forced_interval or (since >= self.full_interval and self.quiet())

    def sweep(self) -> int:
        started = time.monotonic()
        found = gc.collect()
        self._last_full = time.monotonic()
        self.full_sweeps += 1
        log.info(
            "full garbage collection: %d unreachable, %.3f s", found, self._last_full - started
        )
        return found

    async def run(self, check_interval: float = CHECK_INTERVAL_S) -> None:
        """Installed until cancelled; full sweeps when they are due."""
        self.install()
        try:
            while True:
                await asyncio.sleep(check_interval)
                if self.sweep_due(time.monotonic()):
                    self.sweep()
        finally:
            self.uninstall()
            log.info(
                "garbage collector: %s, %d full sweeps", self.pauses.summary(), self.full_sweeps
            )


async def collect_garbage(quiet: Callable[[], bool] = lambda: True) -> None:
    """Run ``Collector`` for this process until cancelled (``quiet``: see the module)."""
    await Collector(quiet).run()
