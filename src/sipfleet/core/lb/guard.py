"""Abuse protection at the edge, without I/O or a clock of its own (times are passed in).

Three tables, each a ``Memo`` (bounded whatever the attacker's address space):

- **SourceLimits**: a token bucket per source address. Over it, a request is blocked
  (the balancer drops it over UDP, answers 503 over a connection).
- **AuthLockouts**: wrong digest answers per (user, source address). Past
  ``failures`` the pair is locked for ``base_s``, doubled at each further lock up to
  ``max_s``. While locked, the request's credentials are taken off before it goes on, so
  the registrar or proxy answers with a fresh challenge, exactly as to a wrong password:
  a guesser cannot tell a lockout from a miss, and the right password, guessed while
  locked, is never tried. The user's own address is another pair: never locked by others.
- **ScannerFilter**: a User-Agent naming a known scanner.

``Reports`` says when a blocked source is to be logged: once per interval per source and
reason, with what was blocked since (the line fail2ban reads).
"""

from __future__ import annotations

from typing import Final

from sipfleet.sip.memo import Memo

MAX_USER: Final = 64  # characters of a digest username kept in a lockout key


class Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class SourceLimits:
    """``rate`` requests a second per source address, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, capacity: int) -> None:
        self.rate: Final = rate
        self.burst: Final = burst
        self.buckets: Final = Memo[str, Bucket](capacity)

    def admit(self, source: str, now: float) -> bool:
        bucket = self.buckets.table.get(source)
        if bucket is None:
            self.buckets.put(source, Bucket(self.burst - 1.0, now))
            return True
        tokens = bucket.tokens + (now - bucket.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return True
        bucket.tokens = tokens
        return False


class Lockout:
    __slots__ = ("failures", "last", "locks", "until")

    def __init__(self) -> None:
        self.failures = 0  # wrong answers since the last lock (or the start)
        self.locks = 0  # locks so far: the next lasts base * 2 ** locks
        self.until = 0.0
        self.last = 0.0  # the last wrong answer


def lockout_key(username: str, source: str) -> str:
    return f"{username[:MAX_USER]}\x00{source}"


class AuthLockouts:
    """Wrong digest answers per (user, source); ``failed`` returns the seconds of a lock
    that begins, else 0. A lock ends on its own; a pair quiet for ``max_s`` (no wrong
    answer) starts over, and a right answer forgets it at once."""

    def __init__(self, failures: int, base_s: float, max_s: float, capacity: int) -> None:
        self.failures: Final = failures
        self.base_s: Final = base_s
        self.max_s: Final = max_s
        self.pairs: Final = Memo[str, Lockout](capacity)

    def locked(self, key: str, now: float) -> bool:
        entry = self.pairs.table.get(key)
        return entry is not None and entry.until > now

    def failed(self, key: str, now: float) -> float:
        entry = self.pairs.table.get(key)
        if entry is None or now - entry.last >= self.max_s:
            entry = self.pairs.put(key, Lockout())
        entry.last = now
        if entry.until > now:  # answered while locked (sent before the lock): no news
            return 0.0
        entry.failures += 1
        if entry.failures < self.failures:
            return 0.0
        seconds = min(self.max_s, self.base_s * 2.0**entry.locks)
        entry.locks += 1
        # after a lock, the next wrong answer locks again (for twice as long)
        entry.failures = self.failures - 1
        entry.until = now + seconds
        return seconds

    def succeeded(self, key: str) -> None:
        self.pairs.table.pop(key, None)


class ScannerFilter:
    """Whether a User-Agent names a scanner: ``agents`` lower-case substrings; answers
    memoised by the header's text, or its whole line (phones send the same few; no
    scanner name is found in "User-Agent:")."""

    def __init__(self, agents: tuple[str, ...]) -> None:
        self.agents: Final = tuple(agent.lower() for agent in agents)
        self.seen: Final = Memo[str, bool](1024)

    def is_scanner(self, user_agent: str) -> bool:
        known = self.seen.table.get(user_agent)
        if known is None:
            lowered = user_agent.lower()
            known = self.seen.put(user_agent, any(agent in lowered for agent in self.agents))
        return known


class Reports:
    """When to log a blocked (source, reason): at the first block and then at most once
    per ``interval``; ``blocked`` returns the count to report (this block and those
    since the last line), or 0 to stay silent."""

    def __init__(self, interval: float, capacity: int) -> None:
        self.interval: Final = interval
        self.pending: Final = Memo[str, list[float]](capacity)  # key -> [last line, count]

    def blocked(self, key: str, now: float) -> int:
        entry = self.pending.table.get(key)
        if entry is None:
            self.pending.put(key, [now, 0.0])
            return 1
        entry[1] += 1.0
        if now - entry[0] < self.interval:
            return 0
        count = int(entry[1])
        entry[0], entry[1] = now, 0.0
        return count
