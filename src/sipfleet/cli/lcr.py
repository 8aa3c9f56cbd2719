"""`sipfleet lcr …`: rules and targets, import/export of the whole LCR data as a TOML file,
the dry run, and reload (DESIGN §3, docs/lcr.md "Managing LCR").

    sipfleet lcr rule add PREFIX [--id N] [--stopper] [--from GLOB] [--ruri GLOB]
                                 [--disabled] --target GW:CAP:PRIORITY:WEIGHT ...
    sipfleet lcr rule remove ID | rule list [--json]
    sipfleet lcr target add RULE GW:CAP[:PRIORITY[:WEIGHT]] | target remove RULE GW[:CAP]
    sipfleet lcr import FILE [--merge] | export
    sipfleet lcr test NUMBER [--cap N] [--from URI] [--ruri URI] [--draws K] [--json]
    sipfleet lcr reload
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sipfleet.cli.common import CliError, add_db_option
from sipfleet.cli.gw import describe_bits, lcr_change, lcr_problems, parse_bits
from sipfleet.routing.lcr import CAPABILITY_NAMES, LcrError, LcrTable, matchable_uri
from sipfleet.routing.lcr_cache import DEFAULT_RELOAD_INTERVAL
from sipfleet.routing.lcr_dryrun import dry_run, human_lines, json_lines, parse_capability
from sipfleet.routing.lcr_file import load_lcr_file
from sipfleet.sip.address import parse_address
from sipfleet.sip.errors import ParseError
from sipfleet.storage import InvalidLcr, LcrSnapshot, RuleEntry, Storage
from sipfleet.storage.lcr_rows import GatewayCapability, Rule, RuleTarget, describe_rule

MAX_DRAWS = 100_000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("lcr", help="least-cost routing: rules, import, dry run")
    commands = parser.add_subparsers(dest="lcr_command", metavar="COMMAND", required=True)
    _register_rule(commands)
    _register_target(commands)
    imports = commands.add_parser("import", help="apply a TOML file of the whole LCR data")
    imports.add_argument("file", type=Path)
    imports.add_argument(
        "--merge",
        action="store_true",
        help="keep what the file does not name (its gateways replace those of the same "
        "name, its rules those of the same id); default: replace everything",
    )
    imports.set_defaults(handler=import_command)
    export = commands.add_parser("export", help="print the LCR data as a file for import")
    export.set_defaults(handler=export_command)
    test = commands.add_parser("test", help="dry run: the trunks a call would try, in order")
    test.add_argument("number", help="the dialled number")
    test.add_argument("--cap", default="phone", help="capability: phone, fax, or a bit (1, 2, 4…)")
    test.add_argument("--from", dest="from_uri", metavar="URI", help="the caller's URI")
    test.add_argument("--ruri", metavar="URI", help="the request URI (for rules with patterns)")
    test.add_argument("--draws", type=int, default=1, help="independent draws (default 1)")
    test.add_argument("--json", action="store_true", help="one JSON list of trunks per draw")
    test.set_defaults(handler=test_command)
    reload = commands.add_parser("reload", help="make every running proxy load the LCR data again")
    reload.set_defaults(handler=reload_command)
    for sub in (imports, export, test, reload):
        add_db_option(sub)


def _register_rule(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rule = commands.add_parser("rule", help="LCR rules")
    rules = rule.add_subparsers(dest="rule_command", metavar="COMMAND", required=True)
    add = rules.add_parser("add", help="add a rule with its targets")
    add.add_argument("prefix", help='dialled-number prefix ("" matches every number)')
    add.add_argument("--id", type=int, help="the rule's id (default: the next free one)")
    add.add_argument("--stopper", action="store_true", help="shorter prefixes are not tried")
    add.add_argument("--from", dest="from_uri", metavar="GLOB", help="caller URI pattern")
    add.add_argument("--ruri", metavar="GLOB", help="request URI pattern")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="GW:CAP:PRIORITY:WEIGHT",
        help="a trunk (PRIORITY and WEIGHT default to 1); repeat for each",
    )
    add.set_defaults(handler=rule_add_command)
    remove = rules.add_parser("remove", help="remove a rule and its targets")
    remove.add_argument("id", type=int)
    remove.set_defaults(handler=rule_remove_command)
    listing = rules.add_parser("list", help="list the rules and their targets")
    listing.add_argument("--json", action="store_true", help="one JSON list")
    listing.set_defaults(handler=rule_list_command)
    for sub in (add, remove, listing):
        add_db_option(sub)


def _register_target(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    target = commands.add_parser("target", help="targets (trunks) of a rule")
    targets = target.add_subparsers(dest="target_command", metavar="COMMAND", required=True)
    add = targets.add_parser("add", help="add a target to a rule")
    add.add_argument("rule", type=int)
    add.add_argument("target", metavar="GW:CAP[:PRIORITY[:WEIGHT]]")
    add.set_defaults(handler=target_add_command)
    remove = targets.add_parser("remove", help="remove a rule's target(s) of a gateway")
    remove.add_argument("rule", type=int)
    remove.add_argument("target", metavar="GW[:CAP]")
    remove.set_defaults(handler=target_remove_command)
    for sub in (add, remove):
        add_db_option(sub)


# --- rules and targets ----------------------------------------------------------------


def parse_target(spec: str, rule_id: int, rule_entry: str | None = None) -> RuleTarget:
    """``GW:CAP[:PRIORITY[:WEIGHT]]``; values are checked later, with the other rows."""
    entry = f"target {json.dumps(spec)}"
    fields = spec.split(":")
    if not 2 <= len(fields) <= 4 or not fields[0]:
        raise CliError(f"{entry}: not GW:CAP:PRIORITY:WEIGHT")
    numbers = []
    for name, text in zip(("priority", "weight"), [*fields[2:], "1", "1"][:2], strict=True):
        try:
            numbers.append(int(text))
        except ValueError:
            raise CliError(f"{entry}: {name}: {json.dumps(text)} is not an integer") from None
    gw = fields[0]
    capability = parse_bits(
        fields[1], f"{rule_entry or f'rule {rule_id}'}: target gw {json.dumps(gw)}"
    )
    return RuleTarget(rule_id, gw, capability, numbers[0], numbers[1])


def rule_add_command(args: argparse.Namespace) -> int:
    rule_id = 0 if args.id is None else args.id
    rule = Rule(
        id=rule_id,
        prefix=args.prefix,
        from_uri=args.from_uri or None,
        request_uri=args.ruri or None,
        stopper=args.stopper,
        enabled=not args.disabled,
    )
    entry = (
        describe_rule(rule)
        if args.id is not None
        else f"new rule (prefix {json.dumps(rule.prefix)})"
    )
    targets = [parse_target(spec, rule_id, entry) for spec in args.target]

    async def add(storage: Storage) -> tuple[Rule, int]:
        added = await storage.lcr.add_rule(rule, targets, assign_id=args.id is None)
        return added, await storage.lcr.version(replica=False)

    added, version = lcr_change(args, add)
    print(f"{describe_rule(added)} added ({len(targets)} target(s); LCR version {version})")
    return 0


def rule_remove_command(args: argparse.Namespace) -> int:
    version = lcr_change(args, lambda storage: storage.lcr.remove_rule(args.id))
    if version is None:
        raise CliError(f"rule: no rule {args.id}")
    print(f"rule {args.id} removed (LCR version {version})")
    return 0


def rule_record(entry: RuleEntry) -> dict[str, Any]:
    rule = entry.rule
    return {
        "id": rule.id,
        "prefix": rule.prefix,
        "from_uri": rule.from_uri,
        "request_uri": rule.request_uri,
        "stopper": rule.stopper,
        "enabled": rule.enabled,
        "targets": [
            {"gw": t.gw, "cap": t.capability, "priority": t.priority, "weight": t.weight}
            for t in entry.targets
        ],
    }


def rule_lines(entry: RuleEntry) -> Iterator[str]:
    rule = entry.rule
    parts = [describe_rule(rule)]
    if rule.from_uri:
        parts.append(f"from={rule.from_uri}")
    if rule.request_uri:
        parts.append(f"ruri={rule.request_uri}")
    if rule.stopper:
        parts.append("stopper")
    if not rule.enabled:
        parts.append("disabled")
    yield "  ".join(parts)
    width = max((len(t.gw) for t in entry.targets), default=0)
    for t in sorted(entry.targets, key=lambda t: (t.capability, t.priority, t.gw)):
        yield (
            f"  {t.gw:<{width}}  {describe_bits(t.capability)}  "
            f"priority={t.priority}  weight={t.weight}"
        )


def rule_list_command(args: argparse.Namespace) -> int:
    entries = lcr_change(args, lambda storage: storage.lcr.list_rules())
    if args.json:
        print(json.dumps([rule_record(entry) for entry in entries]))
        return 0
    if not entries:
        print("no rules")
    for entry in entries:
        for line in rule_lines(entry):
            print(line)
    return 0


def target_add_command(args: argparse.Namespace) -> int:
    target = parse_target(args.target, args.rule)
    version = lcr_change(args, lambda storage: storage.lcr.add_target(target))
    print(f'rule {args.rule}: target gw "{target.gw}" added (LCR version {version})')
    return 0


def target_remove_command(args: argparse.Namespace) -> int:
    gw, _, cap = args.target.partition(":")
    capability = parse_bits(cap, f'rule {args.rule}: target gw "{gw}"') if cap else None

    async def remove(storage: Storage) -> tuple[int, int]:
        removed = await storage.lcr.remove_target(args.rule, gw, capability)
        return removed, await storage.lcr.version(replica=False)

    removed, version = lcr_change(args, remove)
    if not removed:
        raise CliError(f"target: rule {args.rule} has no target {json.dumps(args.target)}")
    print(f"rule {args.rule}: {removed} target(s) removed (LCR version {version})")
    return 0


# --- import and export ----------------------------------------------------------------


def import_command(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        rows = load_lcr_file(path, check=not args.merge).rows
    except LcrError as exc:
        raise lcr_problems(exc.problems, exc.origin) from None

    async def apply(storage: Storage) -> int:
        try:
            if args.merge:
                return await storage.lcr.merge(rows)
            return await storage.lcr.replace_all(rows)
        except InvalidLcr as exc:
            origin = f"{path} (merged with the database)" if args.merge else str(path)
            raise lcr_problems(exc.problems, origin) from None

    version = lcr_change(args, apply)
    counts = (
        f"{len(rows.gateways)} gateway(s), {len(rows.rules)} rule(s), {len(rows.targets)} target(s)"
    )
    how = "merged into the LCR data" if args.merge else "imported, replacing all LCR data"
    print(f"{path}: {counts} {how} (LCR version {version})")
    return 0


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_capability(bits: int) -> str:
    """Names where the bits have one, numbers otherwise; a list when several."""
    items = [
        toml_string(part) if part in CAPABILITY_NAMES else part
        for part in describe_bits(bits).split("+")
    ]
    return items[0] if len(items) == 1 else f"[{', '.join(items)}]"


def export_lines(snapshot: LcrSnapshot) -> Iterator[str]:
    rows = snapshot.rows
    caps: dict[str, list[GatewayCapability]] = defaultdict(list)
    for cap in rows.capabilities:
        caps[cap.gw].append(cap)
    targets: dict[int, list[RuleTarget]] = defaultdict(list)
    for target in rows.targets:
        targets[target.rule].append(target)
    yield f"# sipfleet lcr export: LCR version {snapshot.version}"
    yield "# `sipfleet lcr import FILE` applies it, replacing all LCR data."
    for gateway in rows.gateways:
        yield ""
        yield "[[gateway]]"
        yield f"name = {toml_string(gateway.name)}"
        yield f"host = {toml_string(gateway.host)}"
        if gateway.port is not None:
            yield f"port = {gateway.port}"
        if gateway.transport:
            yield f"transport = {toml_string(gateway.transport)}"
        if gateway.strip:
            yield f"strip = {gateway.strip}"
        if not gateway.enabled:
            yield "enabled = false"
        if gateway.trusted:
            yield "trusted = true"
        listed = ", ".join(
            f"{{ cap = {toml_capability(c.capability)}"
            + (f", prefix = {toml_string(c.prefix)}" if c.prefix else "")
            + " }"
            for c in caps[gateway.name]
        )
        yield f"caps = [{listed}]"
    for rule in rows.rules:
        yield from _rule_toml(rule, targets[rule.id])


def _rule_toml(rule: Rule, targets: list[RuleTarget]) -> Iterator[str]:
    yield ""
    yield "[[rule]]"
    yield f"id = {rule.id}"
    yield f"prefix = {toml_string(rule.prefix)}"
    if rule.from_uri:
        yield f"from_uri = {toml_string(rule.from_uri)}"
    if rule.request_uri:
        yield f"request_uri = {toml_string(rule.request_uri)}"
    if rule.stopper:
        yield "stopper = true"
    if not rule.enabled:
        yield "enabled = false"
    for target in targets:
        yield ""
        yield "[[rule.target]]"
        yield f"gw = {toml_string(target.gw)}"
        yield f"cap = {toml_capability(target.capability)}"
        yield f"priority = {target.priority}"
        yield f"weight = {target.weight}"


def export_command(args: argparse.Namespace) -> int:
    snapshot = lcr_change(args, lambda storage: storage.lcr.load(replica=False))
    for line in export_lines(snapshot):
        print(line)
    return 0


# --- dry run and reload ---------------------------------------------------------------


def _matchable(text: str | None) -> str | None:
    """The form rule patterns see (``sip:user@host``) of a URI or a header value such as
    ``"Al" <sip:al@pbx;user=phone>``; text that is neither is matched as given."""
    if text is None:
        return None
    try:
        return matchable_uri(parse_address(text, "--from").uri)
    except ParseError:
        return text


def test_command(args: argparse.Namespace) -> int:
    try:
        capability = parse_capability(args.cap)
    except ValueError as exc:
        raise CliError(f"cap: {exc}") from None
    if not 1 <= args.draws <= MAX_DRAWS:
        raise CliError(f"draws: {args.draws} is not between 1 and {MAX_DRAWS}")
    if not args.number:
        raise CliError("number: empty")
    snapshot = lcr_change(args, lambda storage: storage.lcr.load(replica=False))
    try:
        table = LcrTable.build(snapshot.rows, f"LCR version {snapshot.version}")
    except LcrError as exc:
        raise lcr_problems(exc.problems, exc.origin) from None
    draws = dry_run(
        table,
        args.number,
        capability,
        _matchable(args.from_uri),
        _matchable(args.ruri),
        draws=args.draws,
    )
    lines = json_lines(draws) if args.json else human_lines(args.number, capability, draws)
    for line in lines:
        print(line)
    return 0


def reload_command(args: argparse.Namespace) -> int:
    version = lcr_change(args, lambda storage: storage.lcr.bump_version())
    print(
        f"LCR version {version}: running proxies load it within their reload interval "
        f"({DEFAULT_RELOAD_INTERVAL:g} s by default)"
    )
    return 0
