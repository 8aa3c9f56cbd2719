"""Destinations that did not answer lately (a timeout, a transport error): for ``hold``
seconds a name's lookups put them last, so one dead SRV target does not cost every call
its Timer B (Kamailio's destination blacklist does the same). They stay in the list, as a
last resort: a hold is never a refusal. Sans-IO: the caller says what time it is."""

from __future__ import annotations

from collections.abc import Sequence

from sipfleet.transport.base import Destination

HOLD_S = 30.0
Key = tuple[str, str, int]  # transport, host, port: not the socket or connection used


class DownList:
    def __init__(self, hold: float = HOLD_S, max_entries: int = 10_000) -> None:
        self.hold = hold
        self.max_entries = max_entries
        self._until: dict[Key, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def mark(self, destination: Destination, now: float) -> None:
        """``destination`` timed out or failed in transport at ``now``."""
        if len(self._until) >= self.max_entries:
            self._until = {k: t for k, t in self._until.items() if t > now}
            if len(self._until) >= self.max_entries:
                del self._until[next(iter(self._until))]  # the oldest mark goes
        self._until.pop(_key(destination), None)
        self._until[_key(destination)] = now + self.hold

    def order(self, destinations: Sequence[Destination], now: float) -> list[Destination]:
        """``destinations`` with those held at ``now`` moved last, each part in its order."""
        if not self._until:
            return list(destinations)
        held = [d for d in destinations if self._until.get(_key(d), 0.0) > now]
        if not held:
            return list(destinations)
        return [d for d in destinations if d not in held] + held


def _key(destination: Destination) -> Key:
    return (destination.transport, destination.host, destination.port)
