"""`sipfleet up`: the embedded default cluster on one host.

LB on 127.0.0.1:5060 (or ``--listen``), a registrar and a proxy behind it on loopback,
SQLite under the data directory. Each role runs as its own process (`sipfleet run`), so the
single-host cluster behaves like the multi-host one; `up` supervises them.

With ``-c cluster.toml`` the config's ``[cluster]`` table asks for several registrars and
proxies (ports counted up from each role's listen addresses) and ``[database]`` may name
MariaDB or PostgreSQL: the whole cluster on one host, for trying it out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sipfleet import native
from sipfleet.cli.common import CliError
from sipfleet.cli.run import add_log_option
from sipfleet.config import Config, ConfigError, config_from_dict, load_config
from sipfleet.config.dump import write_config
from sipfleet.config.listen import ListenAddress, parse_listen
from sipfleet.config.model import default_data_dir
from sipfleet.roles import available_roles
from sipfleet.storage import open_storage
from sipfleet.storage.dsn import dsns_from_config
from sipfleet.storage.errors import AlreadyExists, StorageError
from sipfleet.storage.migrate import upgrade

START_TIMEOUT = 30.0
LOOPBACK = ("127.0.0.1", "::1")
MAX_RESTARTS_PER_MINUTE = 5


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the embedded default cluster (LB, registrar, proxy, SQLite) on this host; "
        "with -c, as many registrars and proxies as its [cluster] table asks for",
    )
    parser.add_argument("-c", "--config", type=Path, help="node configuration file (TOML)")
    parser.add_argument("--data-dir", type=Path, help="where the SQLite database lives")
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="put the LB on this address (UDP and TCP)"
    )
    add_log_option(parser)
    parser.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    config = _config(args)
    data_dir = config.node.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    config = _with_secret(config, data_dir)
    roles = available_roles()
    instances = plan_instances(config, roles)
    dsns = dsns_from_config(config)
    try:
        asyncio.run(upgrade(dsns.write))
        if "lb" in roles:
            asyncio.run(_register_pool_targets(config, instances))
    except StorageError as exc:
        raise CliError(f"database: {exc}") from None
    supervisor = Supervisor(instances, data_dir / "run", args.log_level)
    supervisor.start_all()
    _say_what_started(config, instances, roles, f"{dsns.write.kind} {dsns.write}")
    return supervisor.watch()


@dataclass(frozen=True)
class Instance:
    """One process `up` starts: ``name`` is the role, numbered when there are several."""

    name: str
    role: str
    config: Config

    @property
    def listen(self) -> list[ListenAddress]:
        return list(getattr(self.config, self.role).listen)


def plan_instances(config: Config, roles: list[str]) -> list[Instance]:
    """One LB, ``cluster.registrars`` registrars and ``cluster.proxies`` proxies; the n-th
    instance of a role (from 0) listens on the role's addresses with their ports + n."""
    counts = {"lb": 1, "registrar": config.cluster.registrars, "proxy": config.cluster.proxies}
    instances = []
    for role in roles:
        count = counts.get(role, 1)
        for n in range(count):
            name = role if count == 1 else f"{role}{n + 1}"
            instances.append(Instance(name, role, _shifted(config, role, n)))
    _check_distinct(instances)
    return instances


def _shifted(config: Config, role: str, offset: int) -> Config:
    if offset == 0:
        return config
    section = getattr(config, role)
    listen = []
    for address in section.listen:
        if address.port == 0 or address.port + offset > 65535:
            raise CliError(
                f"cluster: {role}.listen {address} cannot be counted up to {offset + 1} "
                "instances: give a fixed port with room above it"
            )
        listen.append(replace(address, port=address.port + offset))
    return config.model_copy(update={role: section.model_copy(update={"listen": listen})})


def _check_distinct(instances: list[Instance]) -> None:
    taken: dict[tuple[str, str, int], str] = {}
    for instance in instances:
        addresses = instance.listen
        if instance.role == "lb":
            addresses += instance.config.lb.internal_listen
        for address in addresses:
            key = (address.transport, address.host, address.port)
            other = taken.setdefault(key, instance.name)
            if other != instance.name and address.port != 0:
                raise CliError(
                    f"cluster: {instance.name} would listen on {address}, which {other} "
                    f"uses too: move {instance.role}.listen or lower the [cluster] counts"
                )


def _config(args: argparse.Namespace) -> Config:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    data = config.model_dump(mode="json")
    if args.data_dir is not None:
        data["node"]["data_dir"] = str(args.data_dir)
    elif args.config is None and not os.environ.get("SIPFLEET_DATA_DIR"):
        data["node"]["data_dir"] = str(default_data_dir())
    if args.listen:
        _public_listen(data["lb"], args.listen)
    try:
        return config_from_dict(data, "sipfleet up")
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _public_listen(lb: dict[str, Any], listen: str) -> None:
    """The LB's client side on ``listen``; its internal side (Path, the inner Record-Route,
    where the registrar and proxy send) stays on loopback, like those roles."""
    try:
        address = parse_listen(f"udp:{listen}")
    except ValueError as exc:
        raise CliError(f"--listen: {exc}") from None
    if ipaddress.ip_address(address.host).is_unspecified:
        raise CliError(
            f"--listen: {address.host} is not an address clients can be sent to: "
            "give the host's public address"
        )
    lb["listen"] = [f"udp:{listen}", f"tcp:{listen}"]
    if not lb.get("internal_listen") and address.host not in LOOPBACK:
        inside = f"127.0.0.1:{address.port}"  # same port, loopback: free where listen is
        lb["internal_listen"] = [f"udp:{inside}", f"tcp:{inside}"]


def _with_secret(config: Config, data_dir: Path) -> Config:
    """A cluster secret that survives restarts: nonces and flow tokens stay valid."""
    if config.node.cluster_secret:
        return config
    path = data_dir / "cluster-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    node = config.node.model_copy(update={"cluster_secret": path.read_text().strip()})
    return config.model_copy(update={"node": node})


async def _register_pool_targets(config: Config, instances: list[Instance]) -> None:
    """The LB finds the local registrars and proxies through lb_target, like any other."""
    storage = open_storage(config)
    try:
        for instance in instances:
            if instance.role not in ("registrar", "proxy"):
                continue
            address = instance.listen[0]
            host = f"[{address.host}]" if ":" in address.host else address.host
            with contextlib.suppress(AlreadyExists):
                await storage.lb_targets.add(instance.role, f"sip:{host}:{address.port}")  # type: ignore[arg-type]
    finally:
        await storage.close()


def _say_what_started(
    config: Config, instances: list[Instance], roles: list[str], database: str
) -> None:
    lines = ["sipfleet is up:"]
    for instance in instances:
        listen = ", ".join(str(address) for address in instance.listen)
        if instance.role == "lb" and config.lb.internal_listen:
            inside = ", ".join(str(address) for address in config.lb.internal_listen)
            listen += f" (toward the registrar and proxy: {inside})"
        lines.append(f"  {instance.name:<10} {listen}")
    missing = [role for role in ("lb", "registrar", "proxy") if role not in roles]
    if missing:
        lines.append(f"  not built yet: {', '.join(missing)}")
    lines.append(f"  database   {database}")
    lines.append(f"  SIP core   {native.status}")
    lines.append("Add a user:  sipfleet subscriber add alice@localhost --password secret")
    lines.append("Stop with Ctrl-C.")
    print("\n".join(lines), flush=True)


@dataclass
class Child:
    instance: Instance
    config_path: Path
    ready_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] | None = None

    @property
    def role(self) -> str:
        return self.instance.role

    @property
    def name(self) -> str:
        return self.instance.name


class Supervisor:
    """Starts one `sipfleet run` per instance, restarts a crashed one (bounded), stops all."""

    def __init__(self, instances: list[Instance], run_dir: Path, log_level: str) -> None:
        self.log_level = log_level
        run_dir.mkdir(parents=True, exist_ok=True)
        self.children = [
            Child(instance, run_dir / f"{instance.name}.toml", run_dir / f"{instance.name}.ready")
            for instance in instances
        ]
        self._stopping = False

    def start_all(self) -> None:
        for child in self.children:
            write_config(child.instance.config, child.config_path)
            self._spawn(child)
        for child in self.children:
            self._wait_ready(child)

    def _spawn(self, child: Child) -> None:
        child.ready_path.unlink(missing_ok=True)
        child.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sipfleet",
                "run",
                child.role,
                "-c",
                str(child.config_path),
                "--ready-file",
                str(child.ready_path),
                "--log-level",
                self.log_level,
            ],
        )

    def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not child.ready_path.exists():
            assert child.process is not None
            if child.process.poll() is not None or time.monotonic() > deadline:
                self.stop_all()
                raise CliError(f"{child.name} did not start (see its log above)")
            time.sleep(0.05)

    def watch(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        while not self._stopping:
            for child in self.children:
                exited = child.process is not None and child.process.poll() is not None
                if exited and not self._restart(child):
                    self.stop_all()
                    return 1
            time.sleep(0.5)
        self.stop_all()
        return 0

    def _restart(self, child: Child) -> bool:
        now = time.monotonic()
        child.restarts = [t for t in (child.restarts or []) if now - t < 60] + [now]
        if len(child.restarts) > MAX_RESTARTS_PER_MINUTE:
            print(f"sipfleet: {child.name} keeps failing; giving up", file=sys.stderr)
            return False
        print(f"sipfleet: {child.name} exited; restarting it", file=sys.stderr)
        self._spawn(child)
        return True

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def stop_all(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        for child in self.children:
            if child.process is not None:
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.process.kill()
