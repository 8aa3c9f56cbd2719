"""DNS records as the RFC 3263 procedure reads them, and a cache that honours their TTLs.

Sans-IO: the caller says what time it is. Names are lower case without the final dot.
A negative answer (the name does not exist, or has no record of that type) is cached
too, for the time its zone's SOA allows (RFC 2308), so a missing NAPTR is not asked
for on every call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, NamedTuple

RecordType = Literal["NAPTR", "SRV", "A", "AAAA"]
NEGATIVE_TTL_S = 30.0  # a negative answer without an SOA to say how long
MAX_TTL_S = 86_400.0  # nothing is kept longer than a day, whatever its TTL says


class Query(NamedTuple):  # a tuple: hashed and compared in C, for the cache's lookups
    name: str
    type: RecordType

    def __str__(self) -> str:
        return f"{self.name} {self.type}"


@dataclass(frozen=True, slots=True)
class Naptr:
    order: int
    preference: int
    flags: str  # lower case
    service: str  # upper case, e.g. "SIP+D2U"
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str  # "" for the root ("."): the service is decidedly not offered here


Record = Naptr | Srv | str  # A and AAAA records are their address as text


@dataclass(frozen=True, slots=True)
class Answer:
    """What DNS said to one query: its records (none: a negative answer) and how long
    they may be kept. ``exists``: False when the name itself does not exist (NXDOMAIN)."""

    records: tuple[Record, ...]
    ttl: float
    exists: bool = True


def domain(name: str) -> str:
    """A name as the cache keys it: lower case, no final dot."""
    return name.rstrip(".").lower()


class RecordCache:
    """Answers by query until their TTL runs out; at most ``max_entries`` of them (the
    least recently used go first)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Query, tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: Query, now: float) -> Answer | None:
        """The answer to ``query`` while it is fresh at ``now``, else None."""
        entry = self._entries.get(query)
        if entry is None:
            return None
        expires, answer = entry
        if now >= expires:
            del self._entries[query]
            return None
        self._entries.move_to_end(query)
        return answer

    def put(self, query: Query, answer: Answer, now: float) -> None:
        ttl = min(max(answer.ttl, 0.0), MAX_TTL_S)
        if ttl <= 0:
            return  # TTL 0: use once, keep never (RFC 1035 §3.2.1)
        self._entries[query] = (now + ttl, answer)
        self._entries.move_to_end(query)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
