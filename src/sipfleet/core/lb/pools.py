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

A target named by a host name (``sip:proxies.example.net``) is looked up by the shell
(RFC 3263: SRV, then A/AAAA) whenever the pools are reloaded, never on the request path;
``update`` takes what it resolved to as members: each address a target of its own, with
its SRV weight, and the SRV priorities as tiers (a lower tier gets nothing while a
higher one has a target up or unknown).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sipfleet.dns.rfc3263 import Located
from sipfleet.routing import selection
from sipfleet.sip import ParseError, SipUri, parse_uri
from sipfleet.storage.model import LbPool, LbState, LbTarget
from sipfleet.transport.base import Destination

Health = Literal["up", "down", "unknown"]
HEALTH_ORDER: tuple[Health, ...] = ("up", "unknown", "down")  # the best first
MISSES_TO_DOWN = 2
MEMBER_IDS = 1_000_000  # a name's members are numbered row id * this + their rank
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
)


class BadTarget(ValueError):
    """A target URI the LB cannot send to."""


def checked_target(uri: str) -> SipUri:
    """``sip:10.0.0.7:5080;transport=tcp``, or a host name to look up (RFC 3263:
    ``sip:proxies.example.net`` for its SRV records). Raises BadTarget."""
    try:
        parsed = parse_uri(uri)
    except ParseError as exc:
        raise BadTarget(f"{uri!r} is not a SIP URI: {exc.reason}") from None
    if not isinstance(parsed, SipUri) or parsed.scheme != "sip":
        raise BadTarget(f"{uri!r}: only sip: URIs can be targets")
    host = parsed.host_bare
    if not _is_ip(host) and not _DNS_NAME.fullmatch(host):
        raise BadTarget(f"{uri!r}: {host!r} is neither an IP address nor a host name")
    transport = parsed.transport
    if transport not in ("udp", "tcp"):
        raise BadTarget(f"{uri!r}: transport {transport} is not served")
    return parsed


def target_destination(uri: str) -> Destination | None:
    """Where to send for a target URI with an IP address; None for a host name (the
    shell resolves it). Raises BadTarget."""
    parsed = checked_target(uri)
    if not _is_ip(parsed.host_bare):
        return None
    return Destination(parsed.transport, parsed.host_bare, parsed.port or 5060)  # type: ignore[arg-type]


def best_health(healths: Iterable[Health]) -> Health:
    """A name's health: its best member's ("up" when one is up)."""
    return min(healths, key=HEALTH_ORDER.index, default="unknown")


def members_of(located: Sequence[Located]) -> list[Member]:
    """What a name resolved to, as pool members. RFC 2782's weight 0 ("a very small
    chance" beside others) counts as 1; addresses without SRV all weigh 1."""
    tiers = {priority: rank for rank, priority in enumerate(sorted({e.priority for e in located}))}
    members = {Member(e.destination, max(e.weight, 1), tiers[e.priority]) for e in located}
    return sorted(members, key=lambda m: (m.tier, m.uri))  # not the draw's order: it varies


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Member:
    """An address a named target resolved to: its SRV weight (the row's weight is
    multiplied by it) and its tier (0 for the best SRV priority, 1 for the next, ...)."""

    destination: Destination
    weight: int
    tier: int = 0

    @property
    def uri(self) -> str:
        host = self.destination.host
        host = f"[{host}]" if ":" in host else host
        return f"sip:{host}:{self.destination.port};transport={self.destination.transport}"


@dataclass(slots=True, eq=False)
class PoolTarget:
    id: int
    pool: LbPool
    uri: str
    weight: int
    state: LbState
    destination: Destination
    health: Health = "unknown"
    tier: int = 0  # SRV priority rank of a name's member (0 for the rest)
    source: str = ""  # the row's URI when this is a member of a name; else ""
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
    def update(
        self,
        rows: Iterable[LbTarget],
        resolved: Mapping[str, Sequence[Member] | str] | None = None,
    ) -> tuple[list[PoolTarget], list[PoolTarget]]:
        """Take the rows of ``lb_target``; returns (added, removed). A target that stays
        keeps its health. ``resolved``: for each row naming a host, its members, or why
        there are none (a row without an entry waits for its first lookup)."""
        wanted: dict[tuple[LbPool, str], PoolTarget] = {}
        self.rejected = {}
        for row in rows:
            try:
                destination = target_destination(row.uri)
            except BadTarget as exc:
                self.rejected[row.uri] = str(exc)
                continue
            if destination is not None:
                wanted[(row.pool, row.uri)] = PoolTarget(
                    row.id, row.pool, row.uri, row.weight, row.state, destination
                )
                continue
            members = (resolved or {}).get(row.uri, "not looked up yet")
            if isinstance(members, str):
                self.rejected[row.uri] = members
                continue
            for rank, member in enumerate(sorted(members, key=lambda m: m.uri)):
                wanted.setdefault(
                    (row.pool, member.uri),
                    PoolTarget(
                        row.id * MEMBER_IDS + rank,
                        row.pool,
                        member.uri,
                        row.weight * member.weight,
                        row.state,
                        member.destination,
                        tier=member.tier,
                        source=row.uri,
                    ),
                )
        return self._take(wanted)

    def _take(
        self, wanted: dict[tuple[LbPool, str], PoolTarget]
    ) -> tuple[list[PoolTarget], list[PoolTarget]]:
        removed = [t for key, t in self.targets.items() if key not in wanted]
        added: list[PoolTarget] = []
        for key, new in wanted.items():
            current = self.targets.get(key)
            if current is None:
                self.targets[key] = new
                added.append(new)
                continue
            current.weight, current.state, current.id = new.weight, new.state, new.id
            current.tier, current.source = new.tier, new.source
            current.select = selection.Target(new.uri, float(new.weight))
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

    def members(self, pool: LbPool, uri: str) -> list[PoolTarget]:
        """The targets a row naming a host resolved to (none for an address)."""
        return [t for t in self.targets.values() if t.pool == pool and t.source == uri]

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
        return _best_tier(up or [t for t in usable if t.health == "unknown"])

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


def _best_tier(targets: list[PoolTarget]) -> list[PoolTarget]:
    """The targets of the lowest tier (RFC 2782: a higher SRV priority is a backup)."""
    if not targets:
        return targets
    best = min(t.tier for t in targets)
    return [t for t in targets if t.tier == best]
