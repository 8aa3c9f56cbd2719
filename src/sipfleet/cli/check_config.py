"""`sipfleet check-config [-c node.toml | FILE ...]`: is this node's config usable?

Reads each file as `sipfleet run` would (environment overrides included) and reports every
problem on one line naming its key: TOML syntax, unknown keys, types and ranges (pydantic),
then what the model alone cannot see: database URLs, expiry and timer order, addresses that
must be IP literals, the cluster secret, the proxy's policy module, `sipfleet up`'s
[cluster] ports. ``--connect`` also asks every database of the node for its schema
revision; ``--show`` prints the effective config with secrets hidden. Exit status 1 when
any file has an error; warnings alone do not fail.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipfleet.cli.common import CliError
from sipfleet.config import Config, ConfigError, load_config
from sipfleet.config.dump import config_to_toml
from sipfleet.config.listen import ListenAddress
from sipfleet.roles import ROLE_NAMES
from sipfleet.storage.dsn import Dsn, Dsns, redact
from sipfleet.storage.errors import StorageError
from sipfleet.transport.sockets import is_ip

MIN_SECRET_LENGTH = 16


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check-config", help="check node configuration files; explain problems by key name"
    )
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="node configs")
    parser.add_argument("-c", "--config", type=Path, help="node configuration file (TOML)")
    parser.add_argument(
        "--role",
        choices=[*ROLE_NAMES, "all"],
        default="all",
        help="the role the file is for (checks that only matter to other roles are skipped)",
    )
    parser.add_argument(
        "--connect", action="store_true", help="also reach every database and read its schema"
    )
    parser.add_argument(
        "--show", action="store_true", help="print the effective config, secrets hidden"
    )
    parser.set_defaults(handler=_check_config)


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _check_config(args: argparse.Namespace) -> int:
    paths: list[Path | None] = [*([args.config] if args.config else []), *args.files]
    roles = list(ROLE_NAMES) if args.role == "all" else [args.role]
    failed = False
    for path in paths or [None]:
        name = str(path) if path else "defaults (no file)"
        try:
            config = load_config(path)
        except ConfigError as exc:
            print(str(exc))
            failed = True
            continue
        report = check(config, roles)
        if args.connect and not report.errors:
            report.errors += asyncio.run(reach_databases(config))
        failed = failed or bool(report.errors)
        print(describe(name, roles, report))
        if args.show:
            print(shown(config))
    if failed:
        raise CliError("configuration has errors (see above)")
    return 0


def describe(name: str, roles: list[str], report: Report) -> str:
    if report.errors:
        lines = [f"{name}: {len(report.errors)} error(s)"]
        lines += [f"  {line}" for line in report.errors]
    else:
        lines = [f"{name}: OK for {', '.join(roles)}"]
    lines += [f"  warning: {line}" for line in report.warnings]
    return "\n".join(lines)


def check(config: Config, roles: Iterable[str]) -> Report:
    """What pydantic cannot see, each problem naming its key."""
    roles = set(roles)
    report = Report()
    _check_secret(config, report)
    _check_database(config, report)
    _check_sip(config, report)
    if "lb" in roles:
        for key in ("listen", "internal_listen"):
            for i, address in enumerate(getattr(config.lb, key)):
                if _is_wildcard(address):
                    report.errors.append(
                        f"lb.{key}[{i}]: {address} cannot be written in a Via or Path: "
                        "give the address clients and the cluster reach"
                    )
    if "registrar" in roles:
        _check_registrar(config, report)
        _check_addresses("registrar.trusted_lbs", config.registrar.trusted_lbs, report)
        _check_target_listen("registrar", config.registrar.listen, report)
    if "proxy" in roles:
        _check_addresses("proxy.trusted_lbs", config.proxy.trusted_lbs, report)
        for i, peer in enumerate(config.proxy.trusted_peers):
            if not is_ip(peer.strip("[]")):
                report.warnings.append(
                    f"proxy.trusted_peers[{i}]: {peer!r} is not an IP address: it never "
                    "matches a request's source address"
                )
        _check_target_listen("proxy", config.proxy.listen, report)
        _check_policy(config, report)
    if config.cluster.registrars > 1 or config.cluster.proxies > 1:
        _check_cluster(config, report)
    return report


def _check_secret(config: Config, report: Report) -> None:
    secret = config.node.cluster_secret
    if not secret:
        report.errors.append(
            "node.cluster_secret: not set (here or in SIPFLEET_CLUSTER_SECRET); every node "
            "of the cluster needs the same one (`sipfleet up` makes its own)"
        )
    elif len(secret) < MIN_SECRET_LENGTH:
        report.warnings.append(
            f"node.cluster_secret: only {len(secret)} characters; it signs flow tokens and "
            "nonces: use 32 random ones (openssl rand -base64 32)"
        )


def _check_database(config: Config, report: Report) -> None:
    database = config.database
    write: Dsn | None = None
    if database.write:
        try:
            write = Dsn.parse(database.write, "database.write")
        except StorageError as exc:
            report.errors.append(str(exc))
    for i, text in enumerate(database.read):
        try:
            read = Dsn.parse(text, f"database.read[{i}]")
        except StorageError as exc:
            report.errors.append(str(exc))
            continue
        if write is None:
            report.errors.append(
                f"database.read[{i}]: a replica needs database.write (its primary) as well"
            )
        elif read.kind != write.kind:
            report.errors.append(
                f"database.read[{i}]: a {read.kind} replica of a {write.kind} primary"
            )
        elif read == write:
            report.warnings.append(f"database.read[{i}]: is the primary itself")
    is_sqlite = write is None or write.kind == "sqlite"
    if is_sqlite and database.read_fallback != "primary":
        report.warnings.append(
            "database.read_fallback: has no effect with SQLite (MariaDB, PostgreSQL only)"
        )


def _check_sip(config: Config, report: Report) -> None:
    sip = config.sip
    if sip.t1_ms > sip.t2_ms:
        report.errors.append(f"sip.t1_ms: {sip.t1_ms} is more than sip.t2_ms ({sip.t2_ms})")


def _check_registrar(config: Config, report: Report) -> None:
    section = config.registrar
    if section.min_expires > section.max_expires:
        report.errors.append(
            f"registrar.min_expires: {section.min_expires} is more than "
            f"registrar.max_expires ({section.max_expires})"
        )
    elif not section.min_expires <= section.default_expires <= section.max_expires:
        report.errors.append(
            f"registrar.default_expires: {section.default_expires} is outside "
            f"registrar.min_expires .. registrar.max_expires "
            f"({section.min_expires} .. {section.max_expires})"
        )


def _check_addresses(key: str, values: list[str], report: Report) -> None:
    """Compared with the packet's source address as text: IP literals only."""
    for i, value in enumerate(values):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            report.errors.append(
                f"{key}[{i}]: {value!r} is not an IP address (addresses only: no host "
                "names, no networks)"
            )
            continue
        if str(address) != value:
            report.errors.append(f"{key}[{i}]: write {value!r} as {str(address)!r}")


def _check_target_listen(role: str, listen: list[ListenAddress], report: Report) -> None:
    for i, address in enumerate(listen):
        if _is_wildcard(address):
            report.warnings.append(
                f"{role}.listen[{i}]: {address} is a wildcard: its lb_target entry and Via "
                "need the address the LB reaches, so listen on that one"
            )


def _check_policy(config: Config, report: Report) -> None:
    from sipfleet.routing.api import load_policy  # imports the operator's module

    try:
        load_policy(config.proxy.policy, config)
    except ConfigError as exc:
        report.errors.append(str(exc))
    except Exception as exc:  # the operator's make_policy failed
        report.errors.append(f"proxy.policy: make_policy failed: {exc!r}")


def _check_cluster(config: Config, report: Report) -> None:
    from sipfleet.cli.up import plan_instances  # `sipfleet up`'s own plan

    try:
        plan_instances(config, list(ROLE_NAMES))
    except CliError as exc:
        report.errors.append(str(exc))


def _is_wildcard(address: ListenAddress) -> bool:
    return ipaddress.ip_address(address.host).is_unspecified


async def reach_databases(config: Config) -> list[str]:
    """Every DSN of the node answers and is at this sipfleet's schema revision."""
    from sipfleet.storage import open_storage
    from sipfleet.storage.dsn import dsns_from_config

    dsns = dsns_from_config(config)
    problems = []
    named = [("database.write", dsns.write)]
    named += [(f"database.read[{i}]", dsn) for i, dsn in enumerate(dsns.reads)]
    if not config.database.read:
        named = named[:1]
    for key, dsn in named:
        storage = open_storage(Dsns(dsn, (dsn,)), query_timeout=5.0)
        try:
            await storage.check_schema()
        except StorageError as exc:
            problems.append(f"{key}: {exc}")
        finally:
            await storage.close()
    return problems


def shown(config: Config) -> str:
    data = config.model_dump(mode="json")
    if data["node"]["cluster_secret"]:
        data["node"]["cluster_secret"] = "***"
    if data["mgmt"]["token"]:
        data["mgmt"]["token"] = "***"
    database = data["database"]
    database["write"] = redact(database["write"])
    database["read"] = [redact(text) for text in database["read"]]
    return config_to_toml(Config.model_validate(data))
