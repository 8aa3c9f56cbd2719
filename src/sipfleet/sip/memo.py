"""The bounded memo of every table that packets feed (header names, Via sent-bys, URI
host:ports, status, Content-Length and Max-Forwards lines, sender tags, the forwarder's
targets).

    _STATUS_LINES: Final = Memo[str, tuple[int, str, str]](1024)

    known = _STATUS_LINES.table.get(line)  # a hit: one dict lookup, no call
    if known is None:
        known = _STATUS_LINES.put(line, _read_status_line(line))

One eviction rule for all: **clear when full**. ``put`` into a full table empties it
first (keeping the ``seed`` entries, which are always there), then stores. Why this rule:

- A hit stays a plain ``dict.get`` on a ``Final`` attribute of a compiled class: no
  bookkeeping on the hit path, as an LRU would need (a move to the end per hit).
- Memory is bounded by ``limit`` whatever the keys: they come from packets, and an
  attacker may send a new one each time.
- A flood of unique keys costs O(1) per ``put``, amortised (one ``clear`` every ``limit``
  puts), and cannot poison the memo for good as "stop adding when full" did: after a
  clear, the keys of real traffic come back at their next miss. Evicting one entry at a
  time (the oldest, ``next(iter(table))``) degrades as deleted slots pile up at the front.

Compiled with the modules that use it (``native.COMPILED``): ``put`` is then a direct call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``limit`` entries (``seed`` included), emptied when full but for ``seed``.

    Read ``table`` directly; store only through ``put``."""

    __slots__ = ("limit", "seed", "table")

    def __init__(self, limit: int, seed: Mapping[K, V] | None = None) -> None:
        if seed is not None and len(seed) >= limit:
            raise ValueError("a memo's seed must leave room below its limit")
        self.seed: Final[dict[K, V]] = dict(seed) if seed is not None else {}
        self.table: Final[dict[K, V]] = dict(self.seed)
        self.limit: Final = limit

    def put(self, key: K, value: V) -> V:
        """Store ``value`` for ``key`` and return it."""
        table = self.table
        if len(table) >= self.limit:
            table.clear()
            if self.seed:
                table.update(self.seed)
        table[key] = value
        return value

    def __len__(self) -> int:
        return len(self.table)


__all__ = ["Memo"]
