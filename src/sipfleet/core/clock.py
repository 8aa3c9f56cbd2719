"""Time for the async shells: a monotonic now and timers on the running loop.

The sans-IO layers read no clock; the shells pass ``clock.now()`` in and arm the timers
the state machines ask for. Tests can substitute a clock with the same two methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock:
    """Monotonic seconds (the loop's clock) and one-shot or repeating timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return self._loop.call_later(delay, callback)

    def every(self, interval: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` every ``interval`` seconds until cancelled. A slow callback
        delays the next run rather than stacking runs up."""
        return _Repeating(self._loop, interval, callback)


class _Repeating:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, callback: Callable[[], object]
    ) -> None:
        self._loop = loop
        self._interval = interval
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = loop.call_later(interval, self._run)

    def _run(self) -> None:
        try:
            self._callback()
        finally:
            if self._handle is not None:
                self._handle = self._loop.call_later(self._interval, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
