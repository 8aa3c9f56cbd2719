"""Private MariaDB and PostgreSQL servers for tests and benchmarks.

Each server runs from Debian's packages in its own temporary directory, on a free port of
127.0.0.1 (or in a network namespace), and is stopped by its PID. ``start_mariadb`` /
``start_postgres`` start one instance with given options. A replicated pair:
``start_mariadb_primary`` + ``start_mariadb_replica`` (GTID replication), or
``start_postgres_primary`` + ``start_postgres_standby`` (a hot standby streaming the WAL);
``wait_caught_up`` returns once the replica has applied all the primary has written.
Nothing here assumes the machine's own database services exist.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class ServerMissing(RuntimeError):
    """A server binary is not installed; the message names the Debian package."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _need(path: str | None, package: str, what: str) -> str:
    if not path or not os.access(path, os.X_OK):
        raise ServerMissing(
            f"{what} not found: install the Debian package {package} (scripts/setup.sh --test does)"
        )
    return path


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {START_TIMEOUT} s:\n{_tail(log)}")


def _wait_socket(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until a server accepts on its Unix socket (one in a network namespace of its own
    cannot be reached over TCP from here)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{_tail(log)}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {path} within {START_TIMEOUT} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Stop one process we started, by its PID: ``sig``, then SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result  # type: ignore[no-any-return]


@dataclass
class DbServer:
    """One running server. ``stop()`` and ``start()`` again keep its data and port."""

    kind: str  # "mysql" | "postgresql"
    base: Path  # the temporary directory holding everything
    port: int
    user: str
    options: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def dsn(self, database: str) -> str:
        return f"{self.kind}://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def crash(self) -> None:
        """Stop at once, as a power cut would (the next start runs crash recovery)."""
        raise NotImplementedError

    def sql(self, statement: str, database: str | None = None) -> str:
        raise NotImplementedError

    def create_database(self, name: str) -> str:
        """A new empty database; returns its DSN."""
        self.sql(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def destroy(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class MariaDbServer(DbServer):
    # Where it listens. ``netns``: inside that network namespace (root), on ``host`` there;
    # the test process then reaches it through its Unix socket (``socket_dsn``).
    host: str = "127.0.0.1"
    netns: str | None = None

    @property
    def socket_path(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def tmpdir(self) -> Path:
        """Its own temporary directory: servers started at once (two test workers) must
        not share /tmp's ``#sql-temptable-*`` files (one failed to delete its own there)."""
        return self.base / "tmp"

    def socket_dsn(self, database: str) -> str:
        """As root over the Unix socket: works from any network namespace."""
        return f"mysql://root@localhost/{database}?unix_socket={self.socket_path}"

    def start(self) -> None:
        mariadbd = _need(
            shutil.which("mariadbd", path="/usr/sbin:/usr/bin"), "mariadb-server", "mariadbd"
        )
        log = self.base / "error.log"
        self.tmpdir.mkdir(exist_ok=True)
        args = [
            *(["ip", "netns", "exec", self.netns] if self.netns else []),
            mariadbd,
            "--no-defaults",
            f"--datadir={self.base / 'data'}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.base / 'mariadbd.pid'}",
            f"--log-error={log}",
            "--skip-networking=0",
            f"--bind-address={self.host}",
            "--skip-name-resolve",
            *([] if "log-bin" in self.options else ["--skip-log-bin"]),
            f"--user={pwd.getpwuid(os.geteuid()).pw_name}",
            *(f"--{key}={value}" for key, value in self.options.items()),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.netns is None and self.host == "127.0.0.1":
            _wait_port(self.port, self.process, log)
        else:
            _wait_socket(self.socket_path, self.process, log)

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)

    def crash(self) -> None:
        _stop(self.process, signal.SIGKILL)

    def sql(self, statement: str, database: str | None = None) -> str:
        client = _need(shutil.which("mariadb"), "mariadb-client", "mariadb (the client)")
        args = [client, "--no-defaults", f"--socket={self.socket_path}", "-uroot", "-N", "-B"]
        return _run([*args, *([database] if database else []), "-e", statement]).stdout


def start_mariadb(
    options: dict[str, str] | None = None,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> MariaDbServer:
    """Initialise a data directory and start mariadbd on 127.0.0.1:``port`` (or on ``host``
    inside the network namespace ``netns``)."""
    install = _need(shutil.which("mariadb-install-db"), "mariadb-server", "mariadb-install-db")
    base = Path(tempfile.mkdtemp(prefix="sipfleet-mariadb-"))
    defaults = {"innodb-buffer-pool-size": "64M", "max-connections": "200"}
    server = MariaDbServer("mysql", base, port or free_port(), "root", defaults | (options or {}))
    server.host = host
    server.netns = netns
    server.tmpdir.mkdir(exist_ok=True)
    try:
        _run(
            [
                install,
                "--no-defaults",
                f"--datadir={base / 'data'}",
                f"--tmpdir={server.tmpdir}",
                f"--user={pwd.getpwuid(os.geteuid()).pw_name}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]
        )
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


# A MariaDB primary: a binary log from its first start (so a replica can start from the
# beginning of it), row-based events, its own server id.
MARIADB_PRIMARY = {"log-bin": "binlog", "binlog-format": "ROW", "server-id": "1"}
REPLICATION_USER = "replicator"
REPLICATION_PASSWORD = "replication-secret"


def start_mariadb_primary(
    options: dict[str, str] | None = None,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> MariaDbServer:
    """``start_mariadb`` with a binary log and a replication account for replicas."""
    server = start_mariadb(MARIADB_PRIMARY | (options or {}), port, host=host, netns=netns)
    try:
        server.sql(
            f"CREATE USER '{REPLICATION_USER}'@'%' IDENTIFIED BY '{REPLICATION_PASSWORD}'; "
            f"GRANT REPLICATION SLAVE ON *.* TO '{REPLICATION_USER}'@'%'"
        )
    except BaseException:
        server.destroy()
        raise
    return server


def start_mariadb_replica(
    primary: MariaDbServer,
    options: dict[str, str] | None = None,
    port: int | None = None,
    *,
    server_id: int = 2,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> MariaDbServer:
    """A read-only replica of ``primary`` (started by ``start_mariadb_primary``), replicating
    over TCP from the start of the primary's binary log (GTID), caught up when returned.

    The replica reconnects within a second when the primary comes back after a stop
    (MASTER_CONNECT_RETRY=1; MariaDB's default waits 60 s)."""
    settings = {"server-id": str(server_id), "read-only": "1", "relay-log": "relay"}
    replica = start_mariadb(settings | (options or {}), port, host=host, netns=netns)
    try:
        replica.sql(
            f"CHANGE MASTER TO MASTER_HOST='{primary.host}', MASTER_PORT={primary.port}, "
            f"MASTER_USER='{REPLICATION_USER}', MASTER_PASSWORD='{REPLICATION_PASSWORD}', "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE"
        )
        wait_replicated(primary, replica)
    except BaseException:
        replica.destroy()
        raise
    return replica


def wait_replicated(primary: MariaDbServer, replica: MariaDbServer, timeout: int = 30) -> None:
    """Until ``replica`` has applied everything ``primary`` has written so far."""
    position = primary.sql("SELECT @@gtid_binlog_pos").strip()
    if not position:
        return
    done = replica.sql(f"SELECT MASTER_GTID_WAIT('{position}', {int(timeout)})").strip()
    if done != "0":
        status = replica.sql("SHOW SLAVE STATUS")
        raise RuntimeError(f"replica not at {position} after {timeout} s: {status[-2000:]}")


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    return _need(found[-1] if found else shutil.which(name), "postgresql", name)


def _version_key(path: str) -> int:
    version = path.split("/")[4]
    return int(version) if version.isdigit() else 0


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: drop to the ``postgres`` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerMissing(
            "no postgres system user: install the Debian package postgresql"
        ) from None
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


class PostgresServer(DbServer):
    # Where it listens, as for MariaDbServer: ``netns``: inside that network namespace, on
    # ``host`` there; the test process then reaches it through its Unix socket.
    host: str = "127.0.0.1"
    netns: str | None = None

    @property
    def socket_dir(self) -> Path:
        return self.base

    def dsn(self, database: str) -> str:
        return f"{self.kind}://{self.user}@{self.host}:{self.port}/{database}"

    def socket_dsn(self, database: str, user: str | None = None) -> str:
        """Over the Unix socket (trusted: no password), works from any namespace; as the
        postgres superuser unless ``user`` is given."""
        who = user or self.user
        return f"postgresql://{who}@localhost:{self.port}/{database}?host={self.socket_dir}"

    def start(self, *, ready: bool = True) -> None:
        """Start and wait until it answers queries; ``ready=False``: until it accepts
        connections on its socket only (a standby may still turn clients away)."""
        log = self.base / "postgres.log"
        args = [
            *(["ip", "netns", "exec", self.netns] if self.netns else []),
            *_as_postgres_user(),
            _postgres_bin("postgres"),
            "-D",
            str(self.base / "data"),
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
            "-c",
            f"listen_addresses={self.host}",
            *(arg for key, value in self.options.items() for arg in ("-c", f"{key}={value}")),
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=out, cwd=self.base)
        _wait_socket(self.socket_dir / f".s.PGSQL.{self.port}", self.process, log)
        if ready:
            self._wait_ready()

    def _wait_ready(self) -> None:
        """Until it answers queries: a server (a standby above all) accepts connections
        on its socket before it lets them in ("the database system is starting up")."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.sql("SELECT 1")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)  # "fast" shutdown: roll back, close, exit

    def crash(self) -> None:
        # "immediate" shutdown: every backend quits without cleanup. (SIGKILL of the
        # postmaster alone would leave its backends running and the data directory locked.)
        _stop(self.process, signal.SIGQUIT)

    def sql(self, statement: str, database: str | None = None) -> str:
        psql = _need(shutil.which("psql"), "postgresql-client", "psql")
        args = [psql, "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user]
        return _run([*args, "-X", "-A", "-t", "-d", database or "postgres", "-c", statement]).stdout


def _postgres_base(prefix: str) -> Path:
    """A temporary directory the server may write (owned by postgres when we are root)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
    return base


def _new_postgres(
    base: Path, options: dict[str, str] | None, port: int | None, host: str, netns: str | None
) -> PostgresServer:
    defaults = {"shared_buffers": "64MB", "max_connections": "200"}
    server = PostgresServer(
        "postgresql", base, port or free_port(), "postgres", defaults | (options or {})
    )
    server.host = host
    server.netns = netns
    return server


def start_postgres(
    options: dict[str, str] | None = None,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> PostgresServer:
    """initdb a data directory (owned by the postgres user when we are root) and start it
    on 127.0.0.1:``port`` (or on ``host`` inside the network namespace ``netns``)."""
    initdb = _postgres_bin("initdb")
    base = _postgres_base("sipfleet-postgres-")
    server = _new_postgres(base, options, port, host, netns)
    try:
        _run(
            [
                *_as_postgres_user(),
                initdb,
                "-D",
                str(base / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=base,
        )
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


# A PostgreSQL primary that standbys can stream from. synchronous_commit stays on whatever
# the caller asks: a commit is then in the WAL the primary has written when it returns, so
# ``wait_replicated_postgres`` (which waits for pg_current_wal_lsn) covers it. With fsync
# off that costs a write(), not a disk flush.
POSTGRES_PRIMARY = {"wal_level": "replica", "max_wal_senders": "10", "max_replication_slots": "10"}
# A hot standby: answers reads while it replays, and retries a lost primary every 0.5 s
# (PostgreSQL's default waits 5 s), as the MariaDB replica's MASTER_CONNECT_RETRY=1 does.
POSTGRES_STANDBY = {"hot_standby": "on", "wal_retrieve_retry_interval": "500ms"}
# Connections from the other hosts of a test (namespaces, 127.213.0.N): with a password;
# initdb's own lines (trust on 127.0.0.1 and the socket) come first.
_PG_HBA_NETWORK = (
    f"host replication {REPLICATION_USER} all scram-sha-256\nhost all all all scram-sha-256\n"
)


def start_postgres_primary(
    options: dict[str, str] | None = None,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> PostgresServer:
    """``start_postgres`` with WAL for streaming replication, a replication role and the
    pg_hba lines that let standbys (and nodes on other hosts) in with a password."""
    settings = POSTGRES_PRIMARY | (options or {}) | {"synchronous_commit": "on"}
    server = start_postgres(settings, port, host=host, netns=netns)
    try:
        with (server.base / "data" / "pg_hba.conf").open("a") as hba:
            hba.write(_PG_HBA_NETWORK)
        server.sql(
            f"CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN "
            f"PASSWORD '{REPLICATION_PASSWORD}'; SELECT pg_reload_conf()"
        )
    except BaseException:
        server.destroy()
        raise
    return server


def start_postgres_standby(
    primary: PostgresServer,
    options: dict[str, str] | None = None,
    port: int | None = None,
    *,
    slot: str = "standby1",
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> PostgresServer:
    """A hot standby of ``primary`` (started by ``start_postgres_primary``): a base backup
    over TCP with ``pg_basebackup -R`` (standby.signal and primary_conninfo) and a
    replication slot ``slot`` created with it, so the primary keeps every WAL record the
    standby has not received while it is stopped. Caught up when returned.

    Its settings are the primary's own (a standby refuses to start with a lower
    max_connections, among others) plus ``POSTGRES_STANDBY`` and ``options``."""
    base = _postgres_base("sipfleet-pgstandby-")
    settings = primary.options | POSTGRES_STANDBY | (options or {})
    standby = _new_postgres(base, settings, port, host, netns)
    source = (
        f"host={primary.host} port={primary.port} user={REPLICATION_USER} "
        f"password={REPLICATION_PASSWORD} application_name={slot}"
    )
    try:
        _run(
            [
                *(["ip", "netns", "exec", netns] if netns else []),
                *_as_postgres_user(),
                _postgres_bin("pg_basebackup"),
                "-d",
                source,
                "-D",
                str(base / "data"),
                "-R",
                "-C",
                "-S",
                slot,
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            cwd=base,
        )
        standby.start()
        wait_replicated_postgres(primary, standby)
    except BaseException:
        standby.destroy()
        raise
    return standby


def wait_replicated_postgres(
    primary: PostgresServer,
    standby: PostgresServer,
    timeout: float = 30,
    *,
    until: Literal["replay", "receive"] = "replay",
) -> None:
    """Until ``standby`` has replayed everything ``primary`` has written so far: its
    pg_last_wal_replay_lsn() reaches the primary's pg_current_wal_lsn(). ``until =
    "receive"``: until it has received it (pg_last_wal_receive_lsn), applied or not."""
    target = primary.sql("SELECT pg_current_wal_lsn()").strip()
    check = f"SELECT pg_last_wal_{until}_lsn() >= '{target}'::pg_lsn"
    deadline = time.monotonic() + timeout
    while standby.sql(check).strip() != "t":
        if time.monotonic() > deadline:
            status = standby.sql("SELECT * FROM pg_stat_wal_receiver")
            raise RuntimeError(f"standby not at {target} after {timeout} s: {status[-2000:]}")
        time.sleep(0.02)


def wait_caught_up(primary: DbServer, replica: DbServer, timeout: int = 30) -> None:
    """``wait_replicated`` (MariaDB) or ``wait_replicated_postgres``, by the servers' kind."""
    if isinstance(primary, PostgresServer) and isinstance(replica, PostgresServer):
        wait_replicated_postgres(primary, replica, timeout)
    elif isinstance(primary, MariaDbServer) and isinstance(replica, MariaDbServer):
        wait_replicated(primary, replica, timeout)
    else:
        raise TypeError(f"no replication between {primary.kind} and {replica.kind}")


# Settings that trade durability for speed: for tests only, never for benchmark figures.
FAST_MARIADB = {"innodb-flush-log-at-trx-commit": "2", "innodb-doublewrite": "0"}
FAST_POSTGRES = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
