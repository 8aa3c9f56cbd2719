"""`sipfleet db upgrade|current`, and what the database subcommands share.

Every database subcommand uses the same database as `sipfleet up` (the SQLite file under
node.data_dir), unless the config's database.write or ``--db URL`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sipfleet.cli.common import CliError, add_db_option, config_from_args
from sipfleet.config import Config
from sipfleet.storage import (
    Dsn,
    Dsns,
    SchemaOutdated,
    Storage,
    StorageError,
    dsns_from_config,
    open_storage,
)
from sipfleet.storage.migrate import current_revision, head_revision, upgrade

T = TypeVar("T")


def target_dsn(args: argparse.Namespace) -> tuple[Config, Dsn]:
    """The database this command works on: --db, else database.write, else the embedded one."""
    config = config_from_args(args)
    try:
        return config, dsns_from_config(config, getattr(args, "db", None)).write
    except StorageError as exc:
        raise CliError(str(exc)) from None


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one database operation; storage errors become one-line CLI errors (the storage
    log lines meant for servers are held back: the error says it all)."""
    # asyncmy logs MariaDB's notes (e.g. that a primary key's name is ignored) as warnings.
    quiet = [logging.getLogger(name) for name in ("sipfleet.storage", "asyncmy")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        return asyncio.run(_guarded(work))
    except SchemaOutdated as exc:
        raise CliError(str(exc)) from None
    except StorageError as exc:
        raise CliError(str(exc)) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


async def _guarded(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def with_storage(args: argparse.Namespace, work: Callable[[Storage, Config], Awaitable[T]]) -> T:
    """Open the command's database (the primary: an operator wants what was just written),
    check its schema, run ``work``, close."""
    config, dsn = target_dsn(args)

    async def session() -> T:
        storage = open_storage(Dsns(dsn, (dsn,)), pool_size=1, max_in_flight=4)
        try:
            await storage.check_schema()
            return await work(storage, config)
        finally:
            await storage.close()

    return run(session)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = subparsers.add_parser("db", help="database schema")
    commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    up = commands.add_parser(
        "upgrade", help="create or migrate the schema to this version (safe to repeat)"
    )
    add_db_option(up)
    up.set_defaults(handler=upgrade_command)
    current = commands.add_parser("current", help="show the schema revision of the database")
    add_db_option(current)
    current.set_defaults(handler=current_command)


def upgrade_command(args: argparse.Namespace) -> int:
    _, dsn = target_dsn(args)
    result = run(lambda: upgrade(dsn))
    if result.changed:
        print(f"database {dsn}: upgraded from {result.before or '(empty)'} to {result.after}")
    else:
        print(f"database {dsn}: already at {result.after}")
    return 0


def current_command(args: argparse.Namespace) -> int:
    _, dsn = target_dsn(args)
    revision = run(lambda: current_revision(dsn))
    head = head_revision()
    if revision == head:
        print(f"database {dsn}: at {revision} (current)")
        return 0
    print(
        f"database {dsn}: at {revision or '(empty)'}, {head} available: run `sipfleet db upgrade`"
    )
    return 1
