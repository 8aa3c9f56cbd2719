"""`sipfleet up`: the embedded default cluster on one host.

LB on 127.0.0.1:5060 (or ``--listen``; UDP and TCP, and TLS on the next port with a
self-signed certificate made once in the data directory), a registrar and a proxy behind
it on loopback, SQLite under the data directory. Each role runs as its own process
(`sipfleet run`), so the single-host cluster behaves like the multi-host one; `up`
supervises them.

With ``-c cluster.toml`` the config's ``[cluster]`` table asks for several registrars and
proxies (ports counted up from each role's listen addresses) and ``[database]`` may name
MariaDB or PostgreSQL: the whole cluster on one host, for trying it out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
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
from sipfleet.cli.status import process_start_time, status_path, write_status
from sipfleet.config import Config, ConfigError, config_from_dict, load_config
from sipfleet.config.dump import write_config
from sipfleet.config.listen import ListenAddress, parse_listen
from sipfleet.config.model import default_data_dir
from sipfleet.core.lb.sides import hostport
from sipfleet.roles import available_roles
from sipfleet.storage import open_storage
from sipfleet.storage.dsn import Dsn, dsns_from_config
from sipfleet.storage.errors import AlreadyExists, StorageError
from sipfleet.storage.migrate import upgrade
from sipfleet.transport.tls import certificate_fingerprint, certificate_names, write_self_signed

START_TIMEOUT = 30.0
LOOPBACK = ("127.0.0.1", "::1")
POLL_S = 0.2  # how often the supervisor looks at its roles
# A role that exits is started again after RESTART_DELAY_S, doubled after each failure in
# a row up to RESTART_DELAY_MAX_S; a run of STABLE_S seconds starts the series over.
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
STABLE_S = 60.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the embedded default cluster (LB, registrar, proxy, SQLite) on this host; "
        "with -c, as many registrars and proxies as its [cluster] table asks for",
    )
    parser.add_argument("-c", "--config", type=Path, help="node configuration file (TOML)")
    parser.add_argument("--data-dir", type=Path, help="where the SQLite database lives")
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="put the LB on this address (UDP and TCP; TLS on the next port)",
    )
    parser.add_argument(
        "--advertise",
        metavar="HOST[:PORT]",
        help="the public address clients reach --listen at, behind 1:1 NAT (cloud hosts): "
        "the LB's Via and Record-Route toward clients name it ([lb] advertise)",
    )
    parser.add_argument(
        "--restart-delay",
        type=_seconds,
        default=RESTART_DELAY_S,
        metavar="SECONDS",
        help="wait this long before starting a failed role again, twice as long after "
        f"each further failure in a row (default {RESTART_DELAY_S:g})",
    )
    parser.add_argument(
        "--restart-delay-max",
        type=_seconds,
        default=RESTART_DELAY_MAX_S,
        metavar="SECONDS",
        help=f"the longest wait before a restart (default {RESTART_DELAY_MAX_S:g})",
    )
    add_log_option(parser)
    parser.set_defaults(handler=_up)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: give 0 < seconds <= 3600")
    return value


def _up(args: argparse.Namespace) -> int:
    config = _config(args)
    data_dir = config.node.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    config = _with_secret(config, data_dir)
    if args.config is None:
        config = with_websocket(with_tls(config, data_dir))
    roles = available_roles()
    instances = plan_instances(config, roles)
    dsns = dsns_from_config(config)
    try:
        asyncio.run(upgrade(dsns.write))
        if "lb" in roles:
            asyncio.run(_register_pool_targets(config, instances))
    except StorageError as exc:
        raise CliError(f"database: {exc}") from None
    supervisor = Supervisor(
        instances,
        data_dir / "run",
        args.log_level,
        log_format=args.log_format,
        restart_delay=args.restart_delay,
        restart_delay_max=args.restart_delay_max,
        data_dir=data_dir,
    )
    supervisor.start_all()
    if not supervisor.stopping:
        database = f"{dsns.write.kind} {dsns.write}"
        _say_what_started(
            config, supervisor.children, roles, database, add_user_hint(args, config, dsns.write)
        )
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
    return [_own_mgmt_port(instance, n) for n, instance in enumerate(instances)]


def _own_mgmt_port(instance: Instance, offset: int) -> Instance:
    """Each process its own management API: a fixed ``mgmt.listen`` port counted up by
    the instance's place (port 0 needs nothing: each role reports the port it got)."""
    address = instance.config.mgmt.address
    if address is None or address.port == 0 or offset == 0:
        return instance
    if address.port + offset > 65535:
        raise CliError(f"cluster: mgmt.listen {instance.config.mgmt.listen} has no room above it")
    host = f"[{address.host}]" if ":" in address.host else address.host
    mgmt = instance.config.mgmt.model_copy(update={"listen": f"{host}:{address.port + offset}"})
    return replace(instance, config=instance.config.model_copy(update={"mgmt": mgmt}))


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
    if args.advertise:
        data["lb"]["advertise"] = args.advertise
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


def with_tls(config: Config, data_dir: Path) -> Config:
    """The embedded default serves TLS too: on the LB's first host, the port after its
    first one (5061 beside 5060), with a self-signed certificate for that host made once
    under ``data_dir/tls`` (again only when the host changed). Left alone when the LB
    already has a tls: listener."""
    lb = config.lb
    if any(address.transport == "tls" for address in lb.listen):
        return config
    first = lb.listen[0]
    port = first.port + 1 if 0 < first.port < 65535 else 0
    certificate, key = data_dir / "tls" / "lb.crt", data_dir / "tls" / "lb.key"
    if not (key.exists() and certificate_names(certificate) >= {first.host}):
        certificate.parent.mkdir(mode=0o700, exist_ok=True)
        write_self_signed(certificate, key, [first.host, "localhost"])
    updated = lb.model_copy(
        update={
            "listen": [*lb.listen, ListenAddress("tls", first.host, port)],
            "tls_certificate": str(certificate),
            "tls_key": str(key),
        }
    )
    return config.model_copy(update={"lb": updated})


def with_websocket(config: Config) -> Config:
    """The embedded default serves browsers too (SIP over WebSocket, RFC 7118): WS and
    WSS on the LB's first host, two and three ports after its first one (5062, 5063
    beside 5060): unprivileged, so no root, and one range with the SIP ports for a
    firewall, counted from ``--listen`` like TLS so two clusters do not collide. WSS
    serves the TLS certificate. Left alone when the LB already has a ws: or wss:."""
    lb = config.lb
    if not lb.tls_certificate or any(a.transport in ("ws", "wss") for a in lb.listen):
        return config
    first = lb.listen[0]
    ws, wss = (first.port + 2, first.port + 3) if 0 < first.port < 65533 else (0, 0)
    added = [ListenAddress("ws", first.host, ws), ListenAddress("wss", first.host, wss)]
    return config.model_copy(update={"lb": lb.model_copy(update={"listen": [*lb.listen, *added]})})


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


def add_user_hint(args: argparse.Namespace, config: Config, database: Dsn) -> str:
    """A `subscriber add` command line that works as printed: the script as it can be
    run from here, the same database as this `up`, a domain the cluster serves."""
    script = Path(sys.argv[0]).resolve()
    on_path = shutil.which("sipfleet")
    if script.name != "sipfleet":  # `python -m sipfleet up`
        command = f"{sys.executable} -m sipfleet"
    elif on_path and Path(on_path).resolve() == script:
        command = "sipfleet"
    else:
        command = str(script)  # the virtualenv's, not on PATH
    domain = config.sip.domains[0] if config.sip.domains else "example.com"
    line = f"{command} subscriber add alice@{domain} --password secret"
    if args.config is not None:
        line += f" -c {Path(args.config).resolve()}"
    elif args.data_dir is not None and database.kind == "sqlite":
        line += f" --db {database}"
    return line


def _say_what_started(
    config: Config, children: list[Child], roles: list[str], database: str, add_user: str
) -> None:
    lines = ["sipfleet is up:"]
    for instance in (child.instance for child in children):
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
    lines += _tls_lines(config)
    lines += _websocket_lines(config)
    apis = [(child.name, child.mgmt) for child in children if child.mgmt]
    if apis:
        lines.append("Status pages and metrics (management API):")
        lines += [f"  {name:<10} {url}/  metrics: {url}/metrics" for name, url in apis]
    lines.append(f"Add a user:  {add_user}")
    lines.append("Stop with Ctrl-C.")
    print("\n".join(lines), flush=True)


def _tls_lines(config: Config) -> list[str]:
    """Where TLS is served, and the certificate a phone must trust (or pin)."""
    secure = [str(address) for address in config.lb.listen if address.transport == "tls"]
    if not secure:
        return []
    certificate = Path(config.lb.tls_certificate)
    try:
        fingerprint = certificate_fingerprint(certificate)
    except (OSError, ValueError) as exc:
        fingerprint = f"unreadable: {exc}"
    return [
        f"  TLS        {', '.join(secure)}",
        f"             certificate {certificate} (SHA-256 {fingerprint})",
    ]


def _websocket_lines(config: Config) -> list[str]:
    """The URLs a browser's SIP stack (JsSIP, SIP.js) is given."""
    urls = [
        f"{a.transport}://{hostport(a.host, a.port)}"
        for a in config.lb.listen
        if a.transport in ("ws", "wss")
    ]
    return [f"  WebSocket  {', '.join(urls)} (browsers: JsSIP, SIP.js)"] if urls else []


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Backoff:
    """How long to wait before starting a role again after it exited: ``first`` seconds
    after its first failure, twice as long after each further one in a row, at most
    ``maximum``. A run that lasted ``stable`` seconds ends the series: the next failure
    waits ``first`` again."""

    def __init__(self, first: float, maximum: float, stable: float = STABLE_S) -> None:
        self.first = first
        self.maximum = max(first, maximum)
        self.stable = stable
        self.failures = 0  # in a row

    def failed(self, ran_for: float) -> float:
        """The delay before the next start, after a run of ``ran_for`` seconds."""
        if ran_for >= self.stable:
            self.failures = 0
        self.failures += 1
        return min(self.maximum, self.first * 2.0 ** min(self.failures - 1, 30))


@dataclass
class Child:
    instance: Instance
    config_path: Path
    ready_path: Path
    backoff: Backoff
    process: subprocess.Popen[bytes] | None = None
    state: str = "starting"  # starting | running | restarting
    started_at: float = 0.0  # monotonic: when the current process was started
    restart_at: float = 0.0  # monotonic: when a restarting role is started again
    delay: float = 0.0  # the back-off of the current restart
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None  # wall clock
    mgmt: str | None = None  # its management API's URL, from its ready file

    def took_ready_file(self) -> None:
        """What the role wrote once ready: the URL of its API (its port may be any)."""
        try:
            facts = json.loads(self.ready_path.read_text())
        except (OSError, ValueError):
            facts = {}
        self.mgmt = facts.get("mgmt") if isinstance(facts, dict) else None

    @property
    def role(self) -> str:
        return self.instance.role

    @property
    def name(self) -> str:
        return self.instance.name


class Supervisor:
    """Starts one `sipfleet run` per instance and keeps each one running on its own.

    A role that cannot start at all at start-up is an error (``CliError`` naming it; the
    others are stopped). Once up, a role that exits is started again after a growing
    back-off (``Backoff``), logged every time, and never takes the other roles down; only
    SIGTERM or SIGINT stops them all. The state of every role is published in
    ``run_dir/status.json`` for `sipfleet status`.
    """

    def __init__(
        self,
        instances: list[Instance],
        run_dir: Path,
        log_level: str,
        *,
        log_format: str | None = None,
        restart_delay: float = RESTART_DELAY_S,
        restart_delay_max: float = RESTART_DELAY_MAX_S,
        data_dir: Path | None = None,
    ) -> None:
        self.log_level = log_level
        self.log_format = log_format  # None: each role's [node] log_format
        run_dir.mkdir(parents=True, exist_ok=True)
        self.status_path = status_path(run_dir)
        self.data_dir = data_dir or run_dir.parent
        self.children = [
            Child(
                instance,
                run_dir / f"{instance.name}.toml",
                run_dir / f"{instance.name}.ready",
                Backoff(restart_delay, restart_delay_max),
            )
            for instance in instances
        ]
        self._stopping = False
        self._started_at = time.time()

    def start_all(self) -> None:
        """Every role, each ready; else stops those started and raises ``CliError``.
        SIGTERM or SIGINT meanwhile ends it early (``stopping``; `watch` then stops all)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            for child in self.children:
                write_config(child.instance.config, child.config_path)
                self._spawn(child)
            self.publish()
            for child in self.children:
                if self._stopping or not self._wait_ready(child):
                    return
                child.state = "running"
                child.took_ready_file()
            self.publish()
        except BaseException:
            self.stop_all()
            raise

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
                *(["--log-format", self.log_format] if self.log_format else []),
            ],
        )
        child.state = "starting"
        child.started_at = time.monotonic()

    def _wait_ready(self, child: Child) -> bool:
        """Whether ``child`` got ready (False: asked to stop meanwhile)."""
        deadline = time.monotonic() + START_TIMEOUT
        assert child.process is not None
        while not child.ready_path.exists():
            if self._stopping:
                return False
            returncode = child.process.poll()
            if returncode is not None:
                raise CliError(
                    f"{child.name} did not start ({describe_exit(returncode)}; its error "
                    "is above); stopped the other roles"
                )
            if time.monotonic() > deadline:
                raise CliError(
                    f"{child.name} did not start within {START_TIMEOUT:g} s (its log is "
                    "above); stopped the other roles"
                )
            time.sleep(0.05)
        return True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def watch(self) -> int:
        """Until SIGTERM or SIGINT: then stops every role and returns 0."""
        try:
            while not self._stopping:
                changed = [self._check(child, time.monotonic()) for child in self.children]
                if any(changed):
                    self.publish()
                time.sleep(POLL_S)
        finally:
            self.stop_all()
        return 0

    def _check(self, child: Child, now: float) -> bool:
        """Moves ``child`` on (exited, ready, due for a restart); whether it changed."""
        if child.state == "restarting":
            if now < child.restart_at:
                return False
            child.restarts += 1
            self._spawn(child)
            return True
        assert child.process is not None
        returncode = child.process.poll()
        if returncode is not None:
            self._exited(child, describe_exit(returncode), now)
            return True
        if child.state == "starting":
            if child.ready_path.exists():
                child.state = "running"
                child.took_ready_file()
                _say(f"{child.name} is running again (pid {child.process.pid})")
                return True
            if now - child.started_at > START_TIMEOUT:
                child.process.kill()
                child.process.wait()
                self._exited(child, f"not ready within {START_TIMEOUT:g} s", now)
                return True
        return False

    def _exited(self, child: Child, how: str, now: float) -> None:
        assert child.process is not None
        pid = child.process.pid
        ran_for = now - child.started_at
        child.delay = child.backoff.failed(ran_for)
        child.state = "restarting"
        child.restart_at = now + child.delay
        child.process = None
        child.last_exit = how
        child.last_exit_at = time.time()
        failures = child.backoff.failures
        times = "time" if failures == 1 else "times"
        _say(
            f"{child.name} (pid {pid}) {how} after {ran_for:.1f} s; failed {failures} "
            f"{times} in a row; next attempt in {child.delay:g} s (the other roles go on)"
        )

    def publish(self) -> None:
        """``status.json``: what `sipfleet status` shows."""
        now, wall = time.monotonic(), time.time()
        roles = [
            {
                "name": child.name,
                "role": child.role,
                "pid": child.process.pid if child.process is not None else None,
                "state": child.state,
                "restarts": child.restarts,
                "failures": child.backoff.failures,
                "delay": child.delay,  # the back-off before the last restart
                "next_start_at": wall + child.restart_at - now
                if child.state == "restarting"
                else None,
                "last_exit": child.last_exit,
                "last_exit_at": child.last_exit_at,
                "mgmt": child.mgmt if child.state == "running" else None,
            }
            for child in self.children
        ]
        status = {
            "pid": os.getpid(),
            "pid_started": process_start_time(os.getpid()),
            "started_at": self._started_at,
            "updated_at": wall,
            "data_dir": str(self.data_dir),
            "roles": roles,
        }
        try:
            write_status(self.status_path, status)
        except OSError as exc:  # the cluster runs on; only `sipfleet status` is blind
            _say(f"cannot write {self.status_path}: {exc}")

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
                    child.process.wait(timeout=10)
        self.status_path.unlink(missing_ok=True)


def _say(message: str) -> None:
    print(f"sipfleet up: {message}", file=sys.stderr, flush=True)
