"""Targets (§16.5): where a request is forwarded, and the plan of the fork.

A target is a Request-URI (or the request's own one), the Route values to put on top
(a binding's Path, RFC 3327: the call goes back through the LB that registered the
phone) and, for a phone registered directly from behind a NAT, the address its
REGISTER came from. A plan is a sequence of groups: the branches of one group run in
parallel, the next group starts when a group fails in a way ``advance`` accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from sipfleet.sip.grammar import split_values
from sipfleet.storage.model import Binding

Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Target:
    uri: str | None = None  # the new Request-URI; None keeps the request's own
    routes: tuple[str, ...] = ()  # Route values pushed on top, first one on top
    received: str | None = None  # send here instead of the next hop (no routes only)
    gateway: str | None = None  # an off-net trunk's gateway: its outcome feeds the health
    timeout: float | None = None  # a trunk not ringing or answering by then is given up


def next_group_unless_success_or_global(status: int) -> bool:
    """Serial forking (§16.6, q-value groups): go on after anything but 2xx and 6xx."""
    return status >= 300 and status < 600


def next_trunk_on_failover(status: int) -> bool:
    """Off-net trunks (DESIGN §3): the next on 408, 5xx, a transport error or a timeout;
    stop on any other final answer."""
    return status == 408 or 500 <= status < 600


@dataclass(frozen=True, slots=True)
class ForkPlan:
    groups: tuple[tuple[Target, ...], ...]
    advance: Callable[[int], bool] = next_group_unless_success_or_global
    headers: tuple[Header, ...] = field(default=())
    # Trunk failover: the caller hears the last group's answer (the trunk that stopped the
    # search, or the last failure), not the best of every group (§16.7 step 6).
    last_group_answers: bool = False

    @classmethod
    def single(cls, target: Target, headers: Sequence[Header] = ()) -> ForkPlan:
        return cls(((target,),), headers=tuple(headers))


def target_of(binding: Binding) -> Target:
    routes = tuple(split_values(binding.path)) if binding.path else ()
    received = None if routes else binding.received
    return Target(binding.contact, routes, received)


def plan_for_bindings(
    bindings: Sequence[Binding], *, serial: bool, headers: Sequence[Header] = ()
) -> ForkPlan:
    """Every contact at once, or one group per q value, best first (storage returns the
    bindings best q first; a binding without q counts as q=1.0, RFC 3261 §10.2.1.2)."""
    targets = [(1.0 if b.q is None else b.q, target_of(b)) for b in bindings]
    if not serial:
        return ForkPlan((tuple(t for _, t in targets),), headers=tuple(headers))
    targets.sort(key=lambda pair: -pair[0])
    groups = tuple(tuple(t for _, t in group) for _, group in groupby(targets, lambda p: p[0]))
    return ForkPlan(groups, headers=tuple(headers))


def plan_for_trunks(trunks: Sequence[str | Target], headers: Sequence[Header] = ()) -> ForkPlan:
    """Gateways one after another, with the off-net failover rule; the caller gets the
    answer of the trunk that ended the search, or the last failure."""
    groups = tuple((Target(t) if isinstance(t, str) else t,) for t in trunks)
    return ForkPlan(groups, next_trunk_on_failover, tuple(headers), last_group_answers=True)
