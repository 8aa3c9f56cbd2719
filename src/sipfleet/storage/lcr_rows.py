"""The rows of the LCR tables (DESIGN §3, docs/lcr.md) and the checks they must pass.

The four row types mirror the tables ``lcr_gw``, ``lcr_gw_cap``, ``lcr_rule`` and
``lcr_rule_target``. ``check_rows`` names every problem of a set of rows: the storage
backends write only rows it accepts, and ``routing.lcr.LcrTable.build`` indexes only such
rows. Plain values and pure checks, shared by storage (which holds the rows) and routing
(which routes calls with them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sipfleet.sip.errors import ParseError
from sipfleet.sip.uri import split_hostport

MAX_CAPABILITY = 2**31 - 1  # fits the tables' signed 32-bit column
TRANSPORTS = ("udp", "tcp", "tls", "sctp")
PREFIX_CHARS = frozenset("0123456789+*#")
MAX_PATTERN_LENGTH = 256


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
