"""Log lines on a budget: a flood of forged tokens or a NAT that drops thousands of flows
at once must not flood the log. Each line within the budget is written; the rest are
counted and summed up in the next line that gets through."""

from __future__ import annotations

import logging
import time


class LogBudget:
    def __init__(self, logger: logging.Logger, lines_per_minute: int = 60) -> None:
        self._log = logger
        self._rate = lines_per_minute / 60.0
        self._capacity = float(lines_per_minute)
        self._tokens = self._capacity
        self._last = time.monotonic()
        self.suppressed = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        if self.suppressed:
            message += " (and %d more not logged)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self._log.log(level, message, *args)
