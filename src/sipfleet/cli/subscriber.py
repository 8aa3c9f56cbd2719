"""`sipfleet subscriber add|remove|passwd|list`: digest accounts; only HA1 values are stored."""

from __future__ import annotations

import argparse
import getpass
import sys

from sipfleet.cli.common import CliError, add_db_option
from sipfleet.cli.db import with_storage
from sipfleet.config import Config
from sipfleet.sip.digest import compute_ha1
from sipfleet.storage import AlreadyExists, Aor, InvalidInput, Storage, Subscriber


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("subscriber", help="digest accounts (HA1 only)")
    commands = parser.add_subparsers(dest="subscriber_command", metavar="COMMAND", required=True)
    for name, handler, text in (
        ("add", add_command, "add an account"),
        ("passwd", passwd_command, "set an account's password"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("aor", metavar="USER@DOMAIN")
        sub.add_argument(
            "--password", help="the password (default: asked for, or read from standard input)"
        )
        add_db_option(sub)
        sub.set_defaults(handler=handler)
    remove = commands.add_parser("remove", help="remove an account")
    remove.add_argument("aor", metavar="USER@DOMAIN")
    add_db_option(remove)
    remove.set_defaults(handler=remove_command)
    listing = commands.add_parser("list", help="list accounts")
    listing.add_argument("domain", nargs="?", help="only this domain")
    add_db_option(listing)
    listing.set_defaults(handler=list_command)


def parse_aor(text: str) -> Aor:
    try:
        return Aor.parse(text, "subscriber")
    except InvalidInput as exc:
        raise CliError(str(exc)) from None


def read_password(args: argparse.Namespace) -> str:
    password: str | None = args.password
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                raise CliError("password: the two entries differ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("password: empty")
    return password


def credentials(aor: Aor, password: str, config: Config) -> Subscriber:
    """HA1 = H(user:realm:password) for MD5 and SHA-256; the realm is registrar.realm, else
    the domain: the same realm the registrar challenges with."""
    realm = config.registrar.realm or aor.domain
    return Subscriber(
        aor.username,
        aor.domain,
        compute_ha1(aor.username, realm, password, "MD5"),
        compute_ha1(aor.username, realm, password, "SHA-256"),
    )


def add_command(args: argparse.Namespace) -> int:
    aor = parse_aor(args.aor)
    password = read_password(args)

    async def add(storage: Storage, config: Config) -> None:
        try:
            await storage.subscribers.add(credentials(aor, password, config))
        except AlreadyExists:
            raise CliError(f"subscriber: {aor} exists already (use `passwd`)") from None

    with_storage(args, add)
    print(f"subscriber {aor} added")
    return 0


def passwd_command(args: argparse.Namespace) -> int:
    aor = parse_aor(args.aor)
    password = read_password(args)

    async def passwd(storage: Storage, config: Config) -> bool:
        new = credentials(aor, password, config)
        return await storage.subscribers.set_ha1(aor.username, aor.domain, new.ha1, new.ha1_sha256)

    if not with_storage(args, passwd):
        raise CliError(f"subscriber: no subscriber {aor}")
    print(f"subscriber {aor}: password changed")
    return 0


def remove_command(args: argparse.Namespace) -> int:
    aor = parse_aor(args.aor)

    async def remove(storage: Storage, config: Config) -> bool:
        return await storage.subscribers.remove(aor.username, aor.domain)

    if not with_storage(args, remove):
        raise CliError(f"subscriber: no subscriber {aor}")
    print(f"subscriber {aor} removed")
    return 0


def list_command(args: argparse.Namespace) -> int:
    async def listing(storage: Storage, config: Config) -> list[Subscriber]:
        return await storage.subscribers.list_all(args.domain.lower() if args.domain else None)

    for subscriber in with_storage(args, listing):
        print(subscriber.aor)
    return 0
