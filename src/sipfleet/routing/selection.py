"""Choosing a pool target for a Call-ID: weighted rendezvous hashing.

Every target gets a score from hash(key, target) and its weight; the highest score wins.
Removing a target moves only the keys it had; adding one takes only its share; a dialog
keeps its proxy while that proxy is up. The chance of winning is proportional to weight
(the score is -weight / ln(u), u uniform in (0, 1) — the exponential-race construction).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

_SCALE = float(2**64)


@dataclass(frozen=True, slots=True)
class Target:
    uri: str  # identity of the target in the hash: stable across restarts
    weight: float = 1.0


def score(key: str, target: Target) -> float:
    digest = hashlib.blake2b(f"{target.uri}\x00{key}".encode(), digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 0.5) / _SCALE  # strictly inside (0, 1)
    return -target.weight / math.log(uniform)


def choose(targets: Sequence[Target], key: str) -> Target | None:
    """The target for ``key`` among the live ``targets`` (None when there are none)."""
    best: Target | None = None
    best_score = -1.0
    for target in targets:
        if target.weight <= 0:
            continue
        value = score(key, target)
        if value > best_score:
            best, best_score = target, value
    return best


def ranked(targets: Sequence[Target], key: str) -> list[Target]:
    """All targets with positive weight, best first: the failover order for ``key``."""
    live = [t for t in targets if t.weight > 0]
    return sorted(live, key=lambda t: score(key, t), reverse=True)
