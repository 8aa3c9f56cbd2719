"""`sipfleet lb target add|remove|list|drain|enable|disable`: the LB's pools (lb_target).

Running LBs read the table again every `lb.pool_reload_s` (2 s), so a change takes effect
within seconds, without a restart. `list` shows each LB's view of each target's health,
as the LBs write it (lb_target_health; docs/lb.md).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sipfleet.cli.common import CliError, add_db_option
from sipfleet.cli.db import with_storage
from sipfleet.config import Config
from sipfleet.core.lb.pools import BadTarget, checked_target
from sipfleet.mgmt.records import target_record
from sipfleet.storage import AlreadyExists, LbTarget, LbTargetHealth, Storage
from sipfleet.storage.errors import InvalidInput
from sipfleet.storage.model import LB_POOLS, LbPool, LbState

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("lb", help="the load balancer's pools")
    topics = parser.add_subparsers(dest="lb_topic", metavar="TOPIC", required=True)
    target = topics.add_parser("target", help="registrar and proxy pool targets")
    commands = target.add_subparsers(dest="lb_command", metavar="COMMAND", required=True)
    add = commands.add_parser("add", help="add a target (LBs use it within seconds)")
    add.add_argument(
        "uri", help="sip:IP:PORT, or sip:HOST for its SRV or A records; optionally ;transport=tcp"
    )
    add.add_argument("--pool", choices=LB_POOLS, required=True)
    add.add_argument("--weight", type=int, default=1, help="share of new Call-IDs (default 1)")
    add.add_argument(
        "--state",
        choices=("active", "draining", "disabled"),
        default="active",
        help=argparse.SUPPRESS,
    )
    add.set_defaults(handler=add_command)
    remove = commands.add_parser("remove", help="remove a target")
    remove.add_argument("uri")
    remove.add_argument("--pool", choices=LB_POOLS, help="needed when the URI is in both pools")
    remove.set_defaults(handler=remove_command)
    listing = commands.add_parser("list", help="the targets and each LB's view of them")
    listing.add_argument("--pool", choices=LB_POOLS)
    listing.add_argument("--json", action="store_true", help="one JSON list")
    listing.set_defaults(handler=list_command)
    subcommands = [add, remove, listing]
    for name, state, text in (
        ("drain", "draining", "no new Call-IDs; what is under way goes on"),
        ("enable", "active", "back to normal"),
        ("disable", "disabled", "no traffic at all (kept in the table)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("uri")
        sub.add_argument("--pool", choices=LB_POOLS)
        sub.set_defaults(handler=state_command, state=state)
        subcommands.append(sub)
    for sub in subcommands:
        add_db_option(sub)


def _run(args: argparse.Namespace, work: Callable[[Storage], Awaitable[T]]) -> T:
    async def guarded(storage: Storage, config: Config) -> T:
        try:
            return await work(storage)
        except (AlreadyExists, InvalidInput) as exc:
            raise CliError(f"lb target: {exc}") from None

    return with_storage(args, guarded)


def _checked_uri(uri: str) -> str:
    try:
        checked_target(uri)
    except BadTarget as exc:
        raise CliError(f"lb target: {exc}") from None
    return uri


async def _pool_of(storage: Storage, uri: str, pool: LbPool | None) -> LbPool:
    """The pool named, else the only pool holding ``uri``."""
    pools = [t.pool for t in await storage.lb_targets.list_all() if t.uri == uri]
    if pool is not None:
        if pool not in pools:
            raise CliError(f"lb target: no {uri} in the {pool} pool")
        return pool
    if not pools:
        raise CliError(f"lb target: no target {uri}")
    if len(pools) > 1:
        raise CliError(f"lb target: {uri} is in both pools: say --pool")
    return pools[0]


def add_command(args: argparse.Namespace) -> int:
    uri = _checked_uri(args.uri)
    if not 0 <= args.weight <= 65535:
        raise CliError(f"lb target: weight: {args.weight} is not from 0 to 65535")

    async def work(storage: Storage) -> LbTarget:
        try:
            return await storage.lb_targets.add(
                args.pool, uri, weight=args.weight, state=args.state
            )
        except AlreadyExists:
            raise CliError(f"lb target: {uri} is already in the {args.pool} pool") from None

    added = _run(args, work)
    print(f"{added.pool} target {added.uri} added (weight {added.weight}, {added.state})")
    return 0


def remove_command(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> LbPool:
        pool = await _pool_of(storage, args.uri, args.pool)
        await storage.lb_targets.remove(pool, args.uri)
        return pool

    pool = _run(args, work)
    print(f"{pool} target {args.uri} removed")
    return 0


def state_command(args: argparse.Namespace) -> int:
    state: LbState = args.state

    async def work(storage: Storage) -> LbPool:
        pool = await _pool_of(storage, args.uri, args.pool)
        await storage.lb_targets.set_state(pool, args.uri, state)
        return pool

    pool = _run(args, work)
    print(f"{pool} target {args.uri} is {state}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> tuple[list[LbTarget], list[LbTargetHealth]]:
        return await storage.lb_targets.list_all(args.pool), await storage.lb_targets.list_health()

    targets, views = _run(args, work)
    now = int(time.time())
    records = [target_record(target, views, now) for target in targets]
    if args.json:
        print(json.dumps(records))
        return 0
    if not records:
        print("no targets")
    width = max((len(r["uri"]) for r in records), default=0)
    for record in records:
        print(target_line(record, width))
    return 0


def target_line(record: dict[str, Any], width: int) -> str:
    views = record["health"]
    if not views:
        health = "health: no LB has reported"
    else:
        health = "  ".join(
            f"{lb}: {view['health']} since {_clock(view['since'])}"
            + (" (stale)" if view["stale"] else "")
            for lb, view in sorted(views.items())
        )
    return (
        f"{record['pool']:<9}  {record['uri']:<{width}}  weight={record['weight']}  "
        f"{record['state']:<8}  {health}"
    )


def _clock(unix: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix))
