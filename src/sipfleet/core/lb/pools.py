"""The registrar and proxy pools: targets from ``lb_target``, their health, the choice.

A target is chosen for a Call-ID by weighted rendezvous hashing (routing.selection)
among the live targets of its pool: removing a target moves only the Call-IDs it had,
adding one takes only its share, and every LB and worker agrees without talking.

Admin state (the table): ``active`` targets get everything; ``draining`` ones get no new
Call-IDs but keep what is already under way (requests with a To tag, CANCEL, ACK), so a
proxy can be emptied gently; ``disabled`` ones get nothing.

Health (sans-IO; the shell sends the probes): every target gets an OPTIONS each probe
interval. A probe unanswered after ``timeout`` is a miss; after the first miss the target
is probed again at once; two misses in a row take it out. The first answer puts it back.
So a dead target is out within one interval plus two timeouts. A target not probed yet
counts only when no target of its pool is known to be up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from sipfleet.routing import selection
from sipfleet.sip import ParseError, SipUri, parse_uri
from sipfleet.storage.model import LbPool, LbState, LbTarget
from sipfleet.transport.base import Destination

Health = Literal["up", "down", "unknown"]
MISSES_TO_DOWN = 2


class BadTarget(ValueError):
    """A target URI the LB cannot send to (names are not resolved: use an IP address)."""


def target_destination(uri: str) -> Destination:
    """``sip:10.0.0.7:5080;transport=tcp`` -> where to send. Raises BadTarget."""
    try:
        parsed = parse_uri(uri)
    except ParseError as exc:
        raise BadTarget(f"{uri!r} is not a SIP URI: {exc.reason}") from None
    if not isinstance(parsed, SipUri) or parsed.scheme != "sip":
        raise BadTarget(f"{uri!r}: only sip: URIs can be targets")
    host = parsed.host_bare
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BadTarget(f"{uri!r}: the host must be an IP address (no DNS here)") from None
    transport = parsed.transport
    if transport not in ("udp", "tcp"):
        raise BadTarget(f"{uri!r}: transport {transport} is not served")
    return Destination(transport, host, parsed.port or 5060)  # type: ignore[arg-type]


@dataclass(slots=True, eq=False)
class PoolTarget:
    id: int
    pool: LbPool
    uri: str
    weight: int
    state: LbState
    destination: Destination
    health: Health = "unknown"
    misses: int = 0
    probe_seq: int = 0
    probe_sent_at: float | None = None  # the outstanding probe, if any
    next_probe_at: float = 0.0  # 0: at once
    select: selection.Target = field(init=False)

    def __post_init__(self) -> None:
        self.select = selection.Target(self.uri, float(self.weight))

    @property
    def key(self) -> tuple[LbPool, str]:
        return self.pool, self.uri


@dataclass(frozen=True, slots=True)
class HealthChange:
    target: PoolTarget
    health: Health
    why: str


class Pools:
    def __init__(self, probe_interval: float, probe_timeout: float | None = None) -> None:
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout or min(1.0, probe_interval / 4)
        self.targets: dict[tuple[LbPool, str], PoolTarget] = {}
        self.rejected: dict[str, str] = {}  # uri -> why it cannot be used
        self._by_id: dict[int, PoolTarget] = {}
        self._by_address: dict[tuple[str, int], PoolTarget] = {}
        self._choices: dict[tuple[LbPool, bool], list[PoolTarget]] = {}
        self.has_draining = False

    # -- the table -------------------------------------------------------------------------
    def update(self, rows: Iterable[LbTarget]) -> tuple[list[PoolTarget], list[PoolTarget]]:
        """Take the rows of ``lb_target``; returns (added, removed). A target that stays
        keeps its health."""
        wanted: dict[tuple[LbPool, str], LbTarget] = {(row.pool, row.uri): row for row in rows}
        removed = [t for key, t in self.targets.items() if key not in wanted]
        added: list[PoolTarget] = []
        self.rejected = {}
        for key, row in wanted.items():
            current = self.targets.get(key)
            if current is not None:
                current.weight, current.state, current.id = row.weight, row.state, row.id
                current.select = selection.Target(row.uri, float(row.weight))
                continue
            try:
                destination = target_destination(row.uri)
            except BadTarget as exc:
                self.rejected[row.uri] = str(exc)
                continue
            target = PoolTarget(row.id, row.pool, row.uri, row.weight, row.state, destination)
            self.targets[key] = target
            added.append(target)
        for target in removed:
            del self.targets[target.key]
        self._reindex()
        return added, removed

    def _reindex(self) -> None:
        self._by_id = {t.id: t for t in self.targets.values()}
        self._by_address = {
            (t.destination.host, t.destination.port): t for t in self.targets.values()
        }
        self._choices = {}
        self.has_draining = any(t.state == "draining" for t in self.targets.values())

    def by_id(self, target_id: int) -> PoolTarget | None:
        return self._by_id.get(target_id)

    def at(self, host: str, port: int) -> PoolTarget | None:
        """The target listening at ``host:port``, if any."""
        return self._by_address.get((host, port))

    def is_target_host(self, host: str) -> bool:
        return any(h == host for h, _ in self._by_address)

    # -- choosing ----------------------------------------------------------------------------
    def choose(self, pool: LbPool, key: str, *, existing: bool = False) -> PoolTarget | None:
        """The target for Call-ID ``key``; ``existing``: part of something under way
        (draining targets still count)."""
        candidates = self._choices.get((pool, existing))
        if candidates is None:
            candidates = self._candidates(pool, existing)
            self._choices[(pool, existing)] = candidates
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        best = selection.choose([t.select for t in candidates], key)
        return self.targets.get((pool, best.uri)) if best is not None else None

    def _candidates(self, pool: LbPool, existing: bool) -> list[PoolTarget]:
        allowed = ("active", "draining") if existing else ("active",)
        usable = [
            t
            for t in self.targets.values()
            if t.pool == pool and t.state in allowed and t.weight > 0
        ]
        up = [t for t in usable if t.health == "up"]
        return up or [t for t in usable if t.health == "unknown"]

    # -- health --------------------------------------------------------------------------------
    def probes_due(self, now: float) -> list[PoolTarget]:
        """Targets to probe now; each gets a new ``probe_seq``."""
        due = []
        for target in self.targets.values():
            if target.state == "disabled":
                continue
            if target.probe_sent_at is None and now >= target.next_probe_at:
                target.probe_seq += 1
                target.probe_sent_at = now
                target.next_probe_at = now + self.probe_interval
                due.append(target)
        return due

    def judge(self, now: float) -> list[HealthChange]:
        """Count probes that went unanswered; returns the targets that went down."""
        changes = []
        for target in self.targets.values():
            sent = target.probe_sent_at
            if sent is None or now - sent < self.probe_timeout:
                continue
            target.probe_sent_at = None
            target.misses += 1
            if target.misses < MISSES_TO_DOWN:
                target.next_probe_at = now  # ask again at once
            elif target.health != "down":
                changes.append(self._set(target, "down", f"{target.misses} probes unanswered"))
        return changes

    def answered(self, target_id: int, seq: int) -> HealthChange | None:
        """An answer to probe ``seq`` of target ``target_id`` (any status: it is alive)."""
        target = self._by_id.get(target_id)
        if target is None or seq != target.probe_seq:
            return None
        target.probe_sent_at = None
        target.misses = 0
        if target.health != "up":
            return self._set(target, "up", "answered")
        return None

    def _set(self, target: PoolTarget, health: Health, why: str) -> HealthChange:
        target.health = health
        self._choices = {}
        return HealthChange(target, health, why)
