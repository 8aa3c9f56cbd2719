"""Least-cost routing with gateway capabilities (DESIGN §3): pure, sans-IO.

The four row types mirror the tables ``lcr_gw``, ``lcr_gw_cap``, ``lcr_rule`` and
``lcr_rule_target``. ``LcrTable.build`` checks them and indexes the rules once;
``load_gws`` then answers, for one call, the ordered list of trunks to try::

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

from sipfleet.sip.errors import ParseError
from sipfleet.sip.uri import SipUri, TelUri, Uri, split_hostport

PHONE = 1
FAX = 2
CAPABILITY_NAMES: Mapping[str, int] = {"phone": PHONE, "fax": FAX}
MAX_CAPABILITY = 2**31 - 1  # fits the tables' signed 32-bit column
TRANSPORTS = ("udp", "tcp", "tls", "sctp")
PREFIX_CHARS = frozenset("0123456789+*#")
MAX_PATTERN_LENGTH = 256

T = TypeVar("T")
Defunct = Callable[["Gateway"], bool]


class LcrError(ValueError):
    """The LCR rows are inconsistent; ``problems`` names each entry and field at fault."""

    def __init__(self, problems: Sequence[str], origin: str = "lcr") -> None:
        self.problems = tuple(problems)
        self.origin = origin
        count = len(self.problems)
        lines = [f"{origin}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


# --- the rows -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gateway:
    """``lcr_gw``: where trunks go. ``strip`` leading characters are removed from the number."""

    name: str
    host: str
    port: int | None = None
    transport: str | None = None  # None: let the R-URI's default (udp) apply
    strip: int = 0
    enabled: bool = True
    trusted: bool = False  # sees the caller's real identity even when privacy is asked


@dataclass(frozen=True, slots=True)
class GatewayCapability:
    """``lcr_gw_cap``: a gateway carries these capability bits, with this number prefix."""

    gw: str
    capability: int
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """``lcr_rule``: which calls a rule matches. Patterns are globs; None or "" match all."""

    id: int
    prefix: str = ""
    from_uri: str | None = None
    request_uri: str | None = None
    stopper: bool = False
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class RuleTarget:
    """``lcr_rule_target``: a trunk of a rule, for the capability bits it names."""

    rule: int
    gw: str
    capability: int
    priority: int = 1
    weight: int = 1


@dataclass(frozen=True, slots=True)
class LcrRows:
    """The content of the four tables, as storage or a TOML file hands it over."""

    gateways: tuple[Gateway, ...] = ()
    capabilities: tuple[GatewayCapability, ...] = ()
    rules: tuple[Rule, ...] = ()
    targets: tuple[RuleTarget, ...] = ()


@dataclass(frozen=True, slots=True)
class Trunk:
    """One attempt of a call: the gateway and the R-URI to send it to."""

    gateway: Gateway
    capability: int  # the call's capability bit
    priority: int
    weight: int
    rule: int  # id of the rule that selected it
    uri: SipUri


# --- checking -------------------------------------------------------------------------


def describe_rule(rule: Rule) -> str:
    return f"rule {rule.id} (prefix {_quote(rule.prefix)})"


def describe_gateway(name: str) -> str:
    return f"gateway {_quote(name)}"


def check_rows(rows: LcrRows) -> list[str]:
    """Every problem of the rows, each naming its entry and field; empty when usable."""
    problems: list[str] = []
    gateways = _check_gateways(rows.gateways, problems)
    carried = _check_capabilities(rows.capabilities, gateways, problems)
    rules = _check_rules(rows.rules, problems)
    _check_targets(rows.targets, rules, carried, problems)
    return problems


def _check_gateways(gateways: Iterable[Gateway], problems: list[str]) -> dict[str, Gateway]:
    known: dict[str, Gateway] = {}
    for gateway in gateways:
        entry = describe_gateway(gateway.name)
        if not gateway.name:
            problems.append(f"{entry}: name: must not be empty")
        if gateway.name in known:
            problems.append(f"{entry}: name: defined twice")
        known[gateway.name] = gateway
        problems += [f"{entry}: {problem}" for problem in _gateway_field_problems(gateway)]
    return known


def _gateway_field_problems(gateway: Gateway) -> list[str]:
    problems: list[str] = []
    try:
        split_hostport(gateway.host, "gateway host")
    except ParseError:
        problems.append(f"host: {_quote(gateway.host)} is not a host name or IP address")
    if gateway.port is not None and not 1 <= gateway.port <= 65535:
        problems.append(f"port: {gateway.port} is not between 1 and 65535")
    if gateway.transport is not None and gateway.transport not in TRANSPORTS:
        problems.append(
            f"transport: {_quote(gateway.transport)} is not one of {', '.join(TRANSPORTS)}"
        )
    if gateway.strip < 0:
        problems.append(f"strip: {gateway.strip} is negative")
    return problems


def _check_capabilities(
    rows: Iterable[GatewayCapability], gateways: Mapping[str, Gateway], problems: list[str]
) -> dict[str, int]:
    """Check ``lcr_gw_cap`` rows; answer the capability bits each gateway carries."""
    carried = dict.fromkeys(gateways, 0)
    for row in rows:
        entry = f"{describe_gateway(row.gw)}: capability {row.capability}"
        if row.gw not in gateways:
            problems.append(f"{entry}: gw: {_quote(row.gw)} is not a known gateway")
            continue
        problem = _capability_problem(row.capability)
        if problem:
            problems.append(f"{entry}: cap: {problem}")
            continue
        if not _is_prefix(row.prefix):
            problems.append(f"{entry}: prefix: {_prefix_problem(row.prefix)}")
        overlap = carried[row.gw] & row.capability
        if overlap:
            problems.append(f"{entry}: cap: bits {overlap} already have a prefix on this gateway")
        carried[row.gw] |= row.capability
    return carried


def _check_rules(rules: Iterable[Rule], problems: list[str]) -> dict[int, Rule]:
    known: dict[int, Rule] = {}
    by_match: dict[tuple[str, str, str], int] = {}
    for rule in rules:
        entry = describe_rule(rule)
        if rule.id in known:
            problems.append(f"{entry}: id: defined twice")
        known[rule.id] = rule
        if not _is_prefix(rule.prefix):
            problems.append(f"{entry}: prefix: {_prefix_problem(rule.prefix)}")
        for field, pattern in (("from_uri", rule.from_uri), ("request_uri", rule.request_uri)):
            if pattern and len(pattern) > MAX_PATTERN_LENGTH:
                problems.append(f"{entry}: {field}: longer than {MAX_PATTERN_LENGTH} characters")
        match_key = (rule.prefix, rule.from_uri or "", rule.request_uri or "")
        if match_key in by_match:
            problems.append(
                f"{entry}: matches exactly the same calls as rule {by_match[match_key]}"
            )
        by_match.setdefault(match_key, rule.id)
    return known


def _check_targets(
    targets: Iterable[RuleTarget],
    rules: Mapping[int, Rule],
    carried: Mapping[str, int],
    problems: list[str],
) -> None:
    listed: dict[tuple[int, str], int] = {}  # capability bits per (rule, gateway) so far
    for target in targets:
        rule = rules.get(target.rule)
        owner = describe_rule(rule) if rule else f"rule {target.rule}"
        if rule is None:
            problems.append(f"{owner}: target gw {_quote(target.gw)}: rule does not exist")
            continue
        if target.gw not in carried:
            problems.append(f"{owner}: target gw {_quote(target.gw)} is not a known gateway")
            continue
        entry = f"{owner}: target gw {_quote(target.gw)}"
        key = (target.rule, target.gw)
        bits = max(target.capability, 0)
        twice = listed.get(key, 0) & bits
        if twice:
            problems.append(f"{entry}: cap: bits {twice} listed twice for this gateway")
        listed[key] = listed.get(key, 0) | bits
        problems += [f"{entry}: {problem}" for problem in _target_field_problems(target, carried)]


def _target_field_problems(target: RuleTarget, carried: Mapping[str, int]) -> list[str]:
    problems: list[str] = []
    problem = _capability_problem(target.capability)
    if problem:
        problems.append(f"cap: {problem}")
    elif target.capability & ~carried[target.gw]:
        missing = target.capability & ~carried[target.gw]
        problems.append(
            f"cap: bits {missing} are not carried by gateway {_quote(target.gw)} "
            f"(it carries {carried[target.gw]})"
        )
    if target.priority < 1:
        problems.append(f"priority: {target.priority} is less than 1 (1 is tried first)")
    if target.weight < 0:
        problems.append(f"weight: {target.weight} is negative")
    return problems


def _capability_problem(capability: int) -> str | None:
    if capability == 0:
        return "0 names no capability (phone = 1, fax = 2, then 4, 8, ...)"
    if not 0 < capability <= MAX_CAPABILITY:
        return f"{capability} is not a bit-field between 1 and {MAX_CAPABILITY}"
    return None


def _is_prefix(prefix: str) -> bool:
    return all(ch in PREFIX_CHARS for ch in prefix)


def _prefix_problem(prefix: str) -> str:
    return f"{_quote(prefix)} may hold only digits, '+', '*' and '#'"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
