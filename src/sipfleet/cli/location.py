"""`sipfleet location show [AOR]`, `location remove AOR [CONTACT]`: registered bindings."""

from __future__ import annotations

import argparse
import time

from sipfleet.cli.common import CliError, add_db_option
from sipfleet.cli.db import with_storage
from sipfleet.config import Config
from sipfleet.storage import Aor, Binding, InvalidInput, Storage


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("location", help="registered bindings")
    commands = parser.add_subparsers(dest="location_command", metavar="COMMAND", required=True)
    show = commands.add_parser("show", help="bindings of one AOR, or of every AOR")
    show.add_argument("aor", nargs="?", metavar="AOR", help="USER@DOMAIN")
    add_db_option(show)
    show.set_defaults(handler=show_command)
    remove = commands.add_parser("remove", help="remove a contact's bindings, or all of an AOR")
    remove.add_argument("aor", metavar="AOR", help="USER@DOMAIN")
    remove.add_argument(
        "contact",
        nargs="?",
        help="the contact URI: every binding with it, RFC 5626 flows too (default: every binding)",
    )
    add_db_option(remove)
    remove.set_defaults(handler=remove_command)


def parse_aor(text: str) -> Aor:
    try:
        return Aor.parse(text, "aor")
    except InvalidInput as exc:
        raise CliError(str(exc)) from None


def describe(binding: Binding, now: int) -> str:
    """One binding on one line: contact first, then what an operator asks about."""
    parts = [binding.contact, f"expires={binding.expires - now}s"]
    optional = {
        "q": binding.q,
        "received": binding.received,
        "path": binding.path,
        "instance": binding.instance,
        "reg-id": binding.reg_id,
        "flow": binding.flow,
        "socket": binding.socket,
        "user-agent": binding.user_agent,
    }
    parts += [f"{name}={value}" for name, value in optional.items() if value is not None]
    parts.append(f"call-id={binding.callid} cseq={binding.cseq}")
    return "  ".join(parts)


def show_command(args: argparse.Namespace) -> int:
    aor = parse_aor(args.aor) if args.aor else None
    now = int(time.time())

    async def show(storage: Storage, config: Config) -> list[Binding]:
        if aor is not None:
            return await storage.location.lookup(aor, now=now)
        return await storage.location.all_bindings(now=now)

    bindings = with_storage(args, show)
    if not bindings:
        print(f"{aor}: not registered" if aor else "no bindings")
        return 1 if aor else 0
    current: Aor | None = None
    for binding in bindings:
        if binding.aor != current:
            current = binding.aor
            print(current)
        print("  " + describe(binding, now))
    return 0


def remove_command(args: argparse.Namespace) -> int:
    aor = parse_aor(args.aor)

    async def remove(storage: Storage, config: Config) -> int:
        if args.contact:
            return await storage.location.remove(aor, args.contact)
        return await storage.location.remove_all(aor)

    removed = with_storage(args, remove)
    if not removed:
        if args.contact:
            raise CliError(f"contact: {args.contact} is not bound to {aor}")
        raise CliError(f"aor: {aor} has no bindings")
    print(f"{aor}: removed {removed} binding{'s' if removed != 1 else ''}")
    return 0
