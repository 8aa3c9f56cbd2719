"""Least-cost routing with gateway capabilities (DESIGN §3): pure, sans-IO.

The rows of the four tables and their checks are storage's (``storage/lcr_rows.py``).
``LcrTable.build`` checks them and indexes the rules once; ``load_gws`` then answers, for
one call, the ordered list of trunks to try::

    table = LcrTable.build(rows)                      # raises LcrError listing every problem
    for trunk in load_gws(table, "4312345", PHONE):   # trunk.uri: sip:014312345@sipgw6
        ...

Semantics (see docs/lcr.md):

- Rules match on the dialled number's prefix and, optionally, glob patterns on the caller's
  and the request's URI. Matching rules are taken longest prefix first; their trunks come
  before those of shorter prefixes, and a matching ``stopper`` rule ends the search.
- A target is used when its capability bits include the call's capability bit and the
  gateway is enabled and not defunct. A gateway is tried at most once per call.
- Within one prefix length trunks are ordered by ascending priority; within one priority by
  a fair weighted random order: each position is an exact weighted draw without replacement,
  so a trunk comes first with probability weight / sum of weights. Weight 0 trunks follow
  all positive-weight trunks of their priority, in uniform random order (a "drain" weight).
- The rewritten R-URI is ``sip:<prefix><number without its first strip chars>@host[:port]``
  plus ``;transport=`` when the gateway names one; ``prefix`` is the gateway's prefix for the
  call's capability.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sipfleet.sip.uri import SipUri, TelUri, Uri
from sipfleet.storage.lcr_rows import MAX_CAPABILITY, Gateway, LcrRows, Rule, check_rows

PHONE = 1
FAX = 2
CAPABILITY_NAMES: Mapping[str, int] = {"phone": PHONE, "fax": FAX}

T = TypeVar("T")
Defunct = Callable[[Gateway], bool]


class LcrError(ValueError):
    """The LCR rows are inconsistent; ``problems`` names each entry and field at fault."""

    def __init__(self, problems: Sequence[str], origin: str = "lcr") -> None:
        self.problems = tuple(problems)
        self.origin = origin
        count = len(self.problems)
        lines = [f"{origin}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


# --- a call's trunks ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trunk:
    """One attempt of a call: the gateway and the R-URI to send it to."""

    gateway: Gateway
    capability: int  # the call's capability bit
    priority: int
    weight: int
    rule: int  # id of the rule that selected it
    uri: SipUri


# --- the index ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    gateway: Gateway
    capability: int
    priority: int
    weight: int
    rule: int
    prefix_by_bit: Mapping[int, str]  # the gateway's number prefix for each capability bit


@dataclass(frozen=True, slots=True)
class _IndexedRule:
    rule: Rule
    from_match: Callable[[str], object] | None
    request_match: Callable[[str], object] | None
    targets: tuple[_Target, ...]

    def matches(self, from_uri: str | None, request_uri: str | None) -> bool:
        return _pattern_matches(self.from_match, from_uri) and _pattern_matches(
            self.request_match, request_uri
        )


def _pattern_matches(match: Callable[[str], object] | None, text: str | None) -> bool:
    if match is None:
        return True
    return text is not None and match(text) is not None


def compile_pattern(pattern: str | None) -> Callable[[str], object] | None:
    """A glob (``*``, ``?``, ``[...]``), case-insensitive, over the whole text.

    Globs rather than regular expressions because the text matched comes from the caller:
    Python's glob translation uses atomic groups, so no pattern can backtrack
    catastrophically on a hostile From header.
    """
    if not pattern:
        return None
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE).match


class LcrTable:
    """The rows, checked and indexed for longest-prefix lookup; immutable once built.

    Rules are kept in one dict per prefix length, longest first, so a lookup costs one dict
    probe per distinct prefix length whatever the number of rules.
    """

    __slots__ = ("_levels", "rows")

    def __init__(
        self, rows: LcrRows, levels: tuple[tuple[int, Mapping[str, tuple[_IndexedRule, ...]]], ...]
    ) -> None:
        self.rows = rows
        self._levels = levels

    @classmethod
    def build(cls, rows: LcrRows, origin: str = "lcr") -> LcrTable:
        problems = check_rows(rows)
        if problems:
            raise LcrError(problems, origin)
        by_length: dict[int, dict[str, list[_IndexedRule]]] = {}
        for indexed in _index_rules(rows):
            prefix = indexed.rule.prefix
            by_length.setdefault(len(prefix), {}).setdefault(prefix, []).append(indexed)
        levels = tuple(
            (length, {prefix: tuple(rules) for prefix, rules in by_length[length].items()})
            for length in sorted(by_length, reverse=True)
        )
        return cls(rows, levels)

    def _matching_rules(
        self, number: str, from_uri: str | None = None, request_uri: str | None = None
    ) -> list[list[_IndexedRule]]:
        """Matching enabled rules grouped by prefix length, longest first, up to a stopper."""
        groups: list[list[_IndexedRule]] = []
        for length, rules_by_prefix in self._levels:
            if length > len(number):
                continue
            candidates = rules_by_prefix.get(number[:length], ())
            matched = [rule for rule in candidates if rule.matches(from_uri, request_uri)]
            if matched:
                groups.append(matched)
                if any(indexed.rule.stopper for indexed in matched):
                    break
        return groups


def _index_rules(rows: LcrRows) -> list[_IndexedRule]:
    gateways = {gateway.name: gateway for gateway in rows.gateways}
    prefixes: dict[str, dict[int, str]] = {}
    for row in rows.capabilities:
        for bit in _bits(row.capability):
            prefixes.setdefault(row.gw, {})[bit] = row.prefix
    targets_by_rule: dict[int, list[_Target]] = {}
    for target in rows.targets:
        targets_by_rule.setdefault(target.rule, []).append(
            _Target(
                gateways[target.gw],
                target.capability,
                target.priority,
                target.weight,
                target.rule,
                prefixes[target.gw],
            )
        )
    return [
        _IndexedRule(
            rule,
            compile_pattern(rule.from_uri),
            compile_pattern(rule.request_uri),
            tuple(targets_by_rule.get(rule.id, ())),
        )
        for rule in rows.rules
        if rule.enabled
    ]


def _bits(value: int) -> Iterable[int]:
    bit = 1
    while bit <= value:
        if value & bit:
            yield bit
        bit <<= 1


# --- the lookup -----------------------------------------------------------------------

_default_rng = random.Random()


def load_gws(
    table: LcrTable,
    number: str,
    capability: int,
    from_uri: str | None = None,
    request_uri: str | None = None,
    *,
    rng: random.Random | None = None,
    is_defunct: Defunct | None = None,
) -> list[Trunk]:
    """The trunks to try for a call to ``number``, in order (empty: no route).

    ``capability`` is one bit (``PHONE``, ``FAX``, ...). ``from_uri`` and ``request_uri``
    are the texts the rules' patterns see (``matchable_uri`` gives the usual form); a rule
    with a pattern does not match when the text is None. ``is_defunct`` leaves out gateways
    that are currently failing.
    """
    if not is_single_capability(capability):
        raise ValueError(f"capability {capability} is not a single bit (1, 2, 4, ...)")
    draw = rng if rng is not None else _default_rng
    trunks: list[Trunk] = []
    tried: set[str] = set()
    for rules in table._matching_rules(number, from_uri, request_uri):
        usable = [
            target
            for indexed in rules
            for target in indexed.targets
            if target.capability & capability
            and target.gateway.enabled
            and not (is_defunct is not None and is_defunct(target.gateway))
        ]
        for target in _priority_order(usable, draw):
            trunk = _make_trunk(target, number, capability)
            if trunk is not None and target.gateway.name not in tried:
                tried.add(target.gateway.name)
                trunks.append(trunk)
    return trunks


def is_single_capability(capability: int) -> bool:
    return 0 < capability <= MAX_CAPABILITY and capability & (capability - 1) == 0


def _priority_order(targets: list[_Target], rng: random.Random) -> list[_Target]:
    ordered: list[_Target] = []
    for priority in sorted({target.priority for target in targets}):
        group = [target for target in targets if target.priority == priority]
        ordered += weighted_order(group, [target.weight for target in group], rng)
    return ordered


def weighted_order(items: Sequence[T], weights: Sequence[int], rng: random.Random) -> list[T]:
    """Items in a fair weighted random order: successive draws without replacement.

    Each draw picks among the remaining positive-weight items with probability weight /
    remaining sum, using integer arithmetic (``randrange`` is exactly uniform), so the first
    item is item i with probability exactly w_i / sum(w). Zero-weight items follow, shuffled.
    """
    if len(items) != len(weights):
        raise ValueError("items and weights differ in length")
    if any(weight < 0 for weight in weights):
        raise ValueError("weights must not be negative")
    remaining = [(weight, item) for weight, item in zip(weights, items, strict=True) if weight]
    total = sum(weight for weight, _ in remaining)
    ordered: list[T] = []
    while remaining:
        index = _weighted_index(remaining, rng.randrange(total))
        weight, item = remaining.pop(index)
        total -= weight
        ordered.append(item)
    drained = [item for weight, item in zip(weights, items, strict=True) if not weight]
    rng.shuffle(drained)
    return ordered + drained


def _weighted_index(weighted: Sequence[tuple[int, object]], pick: int) -> int:
    """The index whose cumulative-weight interval holds ``pick`` (0 <= pick < sum)."""
    for index, (weight, _) in enumerate(weighted):
        if pick < weight:
            return index
        pick -= weight
    raise AssertionError("pick beyond the sum of weights")


def _make_trunk(target: _Target, number: str, capability: int) -> Trunk | None:
    """The trunk with its R-URI, or None when stripping leaves no user part at all."""
    gateway = target.gateway
    user = target.prefix_by_bit.get(capability, "") + number[gateway.strip :]
    if not user:
        return None
    params: dict[str, str | None] = {}
    if gateway.transport:
        params["transport"] = gateway.transport
    uri = SipUri("sip", user, None, gateway.host, gateway.port, params)
    return Trunk(gateway, capability, target.priority, target.weight, target.rule, uri)


def matchable_uri(uri: Uri) -> str:
    """The text rule patterns see: ``scheme:user@host[:port]`` (no parameters), ``tel:N``."""
    if isinstance(uri, SipUri):
        user = f"{uri.user}@" if uri.user is not None else ""
        port = f":{uri.port}" if uri.port is not None else ""
        return f"{uri.scheme}:{user}{uri.host}{port}"
    if isinstance(uri, TelUri):
        return f"tel:{uri.digits}"
    return str(uri)


# --- the capability of a call ---------------------------------------------------------


def call_capability(preference: int | None, sdp: bytes | None) -> int:
    """The default policy: the caller's ``lcr_cap`` if set, fax for a T.38 offer, else phone.

    A preference must be one capability bit; anything else is a ValueError naming it.
    """
    if preference is not None:
        if not is_single_capability(preference):
            raise ValueError(
                f"lcr_cap preference {preference} is not a single capability bit (1, 2, 4, ...)"
            )
        return preference
    if sdp is not None and offers_t38(sdp):
        return FAX
    return PHONE


def offers_t38(sdp: bytes) -> bool:
    """Whether the SDP has an active ``m=image <port> udptl t38`` stream (RFC 3362)."""
    for line in sdp.decode("latin-1").splitlines():
        if not line.startswith("m=image "):
            continue
        fields = line[len("m=image ") :].split()
        if len(fields) < 3 or fields[0].split("/")[0] == "0":
            continue  # malformed, or port 0: a stream declined or disabled
        if fields[1].lower() == "udptl" and "t38" in (fmt.lower() for fmt in fields[2:]):
            return True
    return False
