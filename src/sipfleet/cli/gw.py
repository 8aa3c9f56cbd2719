"""`sipfleet gw add|remove|list|enable|disable`: the LCR gateways (DESIGN §3, docs/lcr.md).

Every change is checked with the rest of the LCR data and written in one transaction that
moves ``lcr_version`` on: running proxies pick it up within their reload interval.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sipfleet.cli.common import CliError, add_db_option
from sipfleet.cli.db import with_storage
from sipfleet.config import Config
from sipfleet.routing.lcr import CAPABILITY_NAMES
from sipfleet.storage import AlreadyExists, GatewayEntry, InvalidLcr, Storage
from sipfleet.storage.lcr_rows import TRANSPORTS, Gateway, GatewayCapability, describe_gateway

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("gw", help="LCR gateways")
    commands = parser.add_subparsers(dest="gw_command", metavar="COMMAND", required=True)
    add = commands.add_parser("add", help="add a gateway")
    add.add_argument("name")
    add.add_argument("--host", required=True, help="host name, IPv4 address or [IPv6]")
    add.add_argument("--port", type=int, help="default: the transport's (5060)")
    add.add_argument("--transport", choices=TRANSPORTS, help="default: none in the R-URI (UDP)")
    add.add_argument(
        "--strip", type=int, default=0, help="leading characters removed from the number"
    )
    add.add_argument(
        "--cap",
        action="append",
        metavar="CAP[:PREFIX]",
        help="what it carries, and the prefix put before the number for it; CAP is a name "
        "(phone, fax), a bit-field number, or several joined by '+'; repeat for each "
        "(default: phone, no prefix)",
    )
    add.add_argument("--trusted", action="store_true", help="sees the real caller despite privacy")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add.set_defaults(handler=add_command)
    remove = commands.add_parser("remove", help="remove a gateway")
    remove.add_argument("name")
    remove.add_argument(
        "--with-targets", action="store_true", help="also remove the rule targets that use it"
    )
    remove.set_defaults(handler=remove_command)
    listing = commands.add_parser("list", help="list the gateways")
    listing.add_argument("--json", action="store_true", help="one JSON list")
    listing.set_defaults(handler=list_command)
    subcommands = [add, remove, listing]
    for name, enabled in (("enable", True), ("disable", False)):
        sub = commands.add_parser(name, help=f"{name} a gateway for routing (it is kept)")
        sub.add_argument("name")
        sub.set_defaults(handler=set_enabled_command, enabled=enabled)
        subcommands.append(sub)
    for sub in subcommands:
        add_db_option(sub)


# --- what gw and lcr share ------------------------------------------------------------


def parse_bits(text: str, entry: str) -> int:
    """A capability bit-field: names (phone, fax) or numbers, joined by '+' or ','.

    Numbers are taken as written, 0 and negatives too: the LCR checks then say what is
    wrong with them, naming the entry.
    """
    bits = 0
    for part in text.replace(",", "+").split("+"):
        word = part.strip().lower()
        if word in CAPABILITY_NAMES:
            bits |= CAPABILITY_NAMES[word]
            continue
        try:
            value = int(word)
        except ValueError:
            known = ", ".join(sorted(CAPABILITY_NAMES))
            raise CliError(
                f"{entry}: cap: {json.dumps(part.strip())} is neither a number nor a name ({known})"
            ) from None
        if value <= 0:
            return value
        bits |= value
    return bits


def describe_bits(bits: int) -> str:
    """``phone``, ``phone+fax``, ``phone+4``: the names where there are names."""
    parts = []
    for name, bit in sorted(CAPABILITY_NAMES.items(), key=lambda item: item[1]):
        if bits & bit:
            parts.append(name)
            bits &= ~bit
    bit = 1
    while bits > 0:
        if bits & bit:
            parts.append(str(bit))
            bits &= ~bit
        bit <<= 1
    return "+".join(parts) or str(bits)


def lcr_problems(problems: Sequence[str], origin: str | None = None) -> CliError:
    """One line for one problem; a count and one indented line each for several."""
    lead = f"{origin}: " if origin else ""
    if len(problems) == 1:
        return CliError(f"{lead}{problems[0]}")
    listed = "\n".join(f"  {problem}" for problem in problems)
    return CliError(f"{lead}{len(problems)} problems\n{listed}")


def lcr_change(
    args: argparse.Namespace, work: Callable[[Storage], Awaitable[T]], hint: str = ""
) -> T:
    """Run one LCR operation; the store's refusals become one-line errors."""

    async def guarded(storage: Storage, config: Config) -> T:
        try:
            return await work(storage)
        except InvalidLcr as exc:
            error = lcr_problems(exc.problems)
            raise CliError(f"{error}{hint}") from None
        except AlreadyExists as exc:
            raise CliError(str(exc)) from None

    return with_storage(args, guarded)


def version_note(version: int) -> str:
    return f"LCR version {version}"


# --- the commands ---------------------------------------------------------------------


def parse_capabilities(name: str, specs: Sequence[str] | None) -> list[GatewayCapability]:
    entry = describe_gateway(name)
    capabilities = []
    for spec in specs or ["phone"]:
        cap, _, prefix = spec.partition(":")
        capabilities.append(GatewayCapability(name, parse_bits(cap, entry), prefix))
    return capabilities


def add_command(args: argparse.Namespace) -> int:
    gateway = Gateway(
        name=args.name,
        host=args.host,
        port=args.port,
        transport=args.transport,
        strip=args.strip,
        enabled=not args.disabled,
        trusted=args.trusted,
    )
    capabilities = parse_capabilities(args.name, args.cap)
    version = lcr_change(args, lambda storage: storage.lcr.add_gateway(gateway, capabilities))
    print(f"{describe_gateway(args.name)} added ({version_note(version)})")
    return 0


def remove_command(args: argparse.Namespace) -> int:
    hint = "" if args.with_targets else " (remove those targets first, or use --with-targets)"
    version = lcr_change(
        args,
        lambda storage: storage.lcr.remove_gateway(args.name, with_targets=args.with_targets),
        hint,
    )
    if version is None:
        raise CliError(f"gw: no {describe_gateway(args.name)}")
    print(f"{describe_gateway(args.name)} removed ({version_note(version)})")
    return 0


def set_enabled_command(args: argparse.Namespace) -> int:
    version = lcr_change(
        args, lambda storage: storage.lcr.set_gateway_enabled(args.name, args.enabled)
    )
    if version is None:
        raise CliError(f"gw: no {describe_gateway(args.name)}")
    state = "enabled" if args.enabled else "disabled"
    print(f"{describe_gateway(args.name)} {state} ({version_note(version)})")
    return 0


def gateway_record(entry: GatewayEntry) -> dict[str, Any]:
    gateway = entry.gateway
    return {
        "name": gateway.name,
        "host": gateway.host,
        "port": gateway.port,
        "transport": gateway.transport,
        "strip": gateway.strip,
        "enabled": gateway.enabled,
        "trusted": gateway.trusted,
        "caps": [{"cap": c.capability, "prefix": c.prefix} for c in entry.capabilities],
    }


def gateway_line(entry: GatewayEntry, width: int) -> str:
    gateway = entry.gateway
    where = gateway.host + (f":{gateway.port}" if gateway.port else "")
    if gateway.transport:
        where += f";transport={gateway.transport}"
    caps = ",".join(
        describe_bits(c.capability) + (f":{c.prefix}" if c.prefix else "")
        for c in entry.capabilities
    )
    parts = [f"{gateway.name:<{width}}", where, f"caps={caps}"]
    if gateway.strip:
        parts.append(f"strip={gateway.strip}")
    parts.append("enabled" if gateway.enabled else "disabled")
    if gateway.trusted:
        parts.append("trusted")
    return "  ".join(parts)


def list_command(args: argparse.Namespace) -> int:
    entries = lcr_change(args, lambda storage: storage.lcr.list_gateways())
    if args.json:
        print(json.dumps([gateway_record(entry) for entry in entries]))
        return 0
    if not entries:
        print("no gateways")
    width = max((len(entry.gateway.name) for entry in entries), default=0)
    for entry in entries:
        print(gateway_line(entry, width))
    return 0
