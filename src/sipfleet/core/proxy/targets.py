"""Targets (§16.5): where a request is forwarded, and the plan of the fork.

A target is a Request-URI (or the request's own one), the Route values to put on top
(a binding's Path, RFC 3327: the call goes back through the LB that registered the
phone) and, for a phone registered directly from behind a NAT, the address its
REGISTER came from. A plan is a sequence of groups: the branches of one group run in
parallel, the next group starts when a group fails in a way ``advance`` accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Final, Protocol

from sipfleet.sip.grammar import split_values

Header = tuple[str, str]
# What a frozen dataclass's generated __init__ calls per field; here a C static. That
# __init__ is interpreted code in the compiled build, and each call builds both.
_set: Final = object.__setattr__


class Reachable(Protocol):
    """The fields of a binding that routing reads: a ``RouteBinding`` (what the proxy
    looks up) or a full ``Binding``."""

    @property
    def id(self) -> int: ...
    @property
    def contact(self) -> str: ...
    @property
    def received(self) -> str | None: ...
    @property
    def path(self) -> str | None: ...
    @property
    def q(self) -> float | None: ...
    @property
    def last_modified(self) -> int: ...
    @property
    def instance(self) -> str | None: ...
    @property
    def reg_id(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Target:
    uri: str | None = None  # the new Request-URI; None keeps the request's own
    routes: tuple[str, ...] = ()  # Route values pushed on top, first one on top
    received: str | None = None  # send here instead of the next hop (no routes only)
    gateway: str | None = None  # an off-net trunk's gateway: its outcome feeds the health
    timeout: float | None = None  # a trunk not ringing or answering by then is given up
    # RFC 5626 §5.3: the same phone instance's other flows, tried in turn when this one fails
    alternates: tuple[Target, ...] = ()

    def __init__(
        self,
        uri: str | None = None,
        routes: tuple[str, ...] = (),
        received: str | None = None,
        gateway: str | None = None,
        timeout: float | None = None,
        alternates: tuple[Target, ...] = (),
    ) -> None:
        """The generated ``__init__``, written out (compiled: see ``_set``)."""
        _set(self, "uri", uri)
        _set(self, "routes", routes)
        _set(self, "received", received)
        _set(self, "gateway", gateway)
        _set(self, "timeout", timeout)
        _set(self, "alternates", alternates)

    def next_flow(self) -> Target:
        """The first alternate flow, with the rest as its own alternates."""
        first, *rest = self.alternates
        return replace(first, alternates=tuple(rest))


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

    def __init__(
        self,
        groups: tuple[tuple[Target, ...], ...],
        advance: Callable[[int], bool] = next_group_unless_success_or_global,
        headers: tuple[Header, ...] = (),
        last_group_answers: bool = False,
    ) -> None:
        """The generated ``__init__``, written out (compiled: see ``_set``)."""
        _set(self, "groups", groups)
        _set(self, "advance", advance)
        _set(self, "headers", headers)
        _set(self, "last_group_answers", last_group_answers)

    @classmethod
    def single(cls, target: Target, headers: Sequence[Header] = ()) -> ForkPlan:
        return cls(((target,),), headers=tuple(headers))


def target_of(binding: Reachable) -> Target:
    routes = tuple(split_values(binding.path)) if binding.path else ()
    received = None if routes else binding.received
    return Target(binding.contact, routes, received)


def most_recent_first(flows: Sequence[Reachable]) -> list[Reachable]:
    """The flows of one instance in the order they are tried (RFC 5626 §5.3: the most
    recently registered first; the later row on a tie within a second)."""
    return sorted(flows, key=lambda b: (b.last_modified, b.id), reverse=True)


def targets_by_instance(bindings: Sequence[Reachable]) -> list[tuple[float, Target]]:
    """(q, target) per binding, except that the bindings of one RFC 5626 instance
    (``+sip.instance`` with a ``reg-id``: one per flow) make one target, its other flows
    as alternates, so the phone rings once; in the order of each instance's first row."""
    flows: dict[str, list[Reachable]] = {}
    order: list[Reachable | str] = []
    for binding in bindings:
        instance = binding.instance
        if instance is None or binding.reg_id is None:
            order.append(binding)
        elif instance in flows:
            flows[instance].append(binding)
        else:
            flows[instance] = [binding]
            order.append(instance)
    targets: list[tuple[float, Target]] = []
    for entry in order:
        if isinstance(entry, str):
            preferred, *others = most_recent_first(flows[entry])
            alternates = tuple(target_of(b) for b in others)
            target = replace(target_of(preferred), alternates=alternates)
        else:
            preferred, target = entry, target_of(entry)
        targets.append((1.0 if preferred.q is None else preferred.q, target))
    return targets


def plan_for_bindings(
    bindings: Sequence[Reachable], *, serial: bool, headers: Sequence[Header] = ()
) -> ForkPlan:
    """Every contact at once, or one group per q value, best first (storage returns the
    bindings best q first; a binding without q counts as q=1.0, RFC 3261 §10.2.1.2).
    A phone registered over several flows (RFC 5626) is one target: its newest flow."""
    targets = targets_by_instance(bindings)
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
