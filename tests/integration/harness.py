"""Running sipfleet roles as real processes for integration tests.

A ``Cluster`` writes one node config per role (free ports on 127.0.0.1, a database of the
test's own), starts ``sipfleet run <role>`` subprocesses, waits until each says it listens,
and stops them by PID at the end. Subscribers and LB targets are added through the same
storage API the CLI uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipfleet.config import Config, config_from_dict
from sipfleet.config.dump import write_config
from sipfleet.sip import Message, Request, Response, parse_message
from sipfleet.sip.builders import make_response
from sipfleet.sip.digest import compute_ha1
from sipfleet.sip.parser import KeepAlivePing, StreamFramer
from sipfleet.storage import Aor, Binding, Storage, Subscriber, open_storage
from sipfleet.storage.dsn import Dsn
from sipfleet.storage.migrate import upgrade

SECRET = "integration-test-secret"
START_TIMEOUT = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (the test binds it soon after)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


@dataclass
class RoleProcess:
    role: str
    config: Config
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        section = getattr(self.config, self.role)
        return int(section.listen[0].port)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    """Roles on 127.0.0.1 sharing one database (SQLite file unless ``dsn`` is given)."""

    workdir: Path
    dsn: str = ""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, RoleProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.dsn:
            self.dsn = f"sqlite:///{self.workdir / 'sipfleet.db'}"
        asyncio.run(upgrade(Dsn.parse(self.dsn)))

    # -- configuration ---------------------------------------------------------------------
    def config_for(
        self, role: str, port: int, name: str | None = None, **sections: dict[str, Any]
    ) -> Config:
        data: dict[str, Any] = {
            "node": {"name": name or role, "data_dir": str(self.workdir), "cluster_secret": SECRET},
            "database": {"write": self.dsn},
            "sip": {"domains": ["example.com", "127.0.0.1"], "auth_algorithms": ["MD5"]},
        }
        listen = [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"]
        data[role] = {"listen": listen}
        for name, values in {**self.overrides, **sections}.items():
            data.setdefault(name, {}).update(values)
        return config_from_dict(data)

    # -- processes ----------------------------------------------------------------------------
    def start(
        self,
        role: str,
        name: str | None = None,
        *,
        netns: str | None = None,
        **sections: dict[str, Any],
    ) -> RoleProcess:
        """Start ``role`` (as ``name``); ``netns``: inside that network namespace (root)."""
        name = name or role
        config = self.config_for(role, free_port(), name, **sections)
        config_path = self.workdir / f"{name}.toml"
        write_config(config, config_path)
        node = RoleProcess(role, config, config_path, self.workdir / f"{name}.log")
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        with node.log_path.open("wb") as log:
            node.process = subprocess.Popen(
                [
                    *(["ip", "netns", "exec", netns] if netns else []),
                    sys.executable,
                    "-m",
                    "sipfleet.cli",
                    "run",
                    role,
                    "-c",
                    str(config_path),
                    "--ready-file",
                    str(ready),
                    "--log-level",
                    "debug",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.roles[name] = node
        self._wait_ready(node, ready)
        return node

    def _wait_ready(self, node: RoleProcess, ready: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        assert node.process is not None
        while time.monotonic() < deadline:
            if ready.exists():
                return
            if node.process.poll() is not None:
                raise RuntimeError(f"{node.role} exited at start:\n{node.log_text()}")
            time.sleep(0.05)
        self.stop_role(node)
        raise RuntimeError(f"{node.role} not ready after {START_TIMEOUT}s:\n{node.log_text()}")

    def stop_role(self, node: RoleProcess, sig: int = signal.SIGTERM) -> None:
        process = node.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def stop(self) -> None:
        for node in self.roles.values():
            self.stop_role(node)

    # -- data -----------------------------------------------------------------------------------
    def add_subscriber(self, username: str, domain: str, password: str) -> None:
        self.add_subscribers([username], domain, password)

    def add_subscribers(self, usernames: list[str], domain: str, password: str) -> None:
        """Accounts with one password, over one storage (one connection each costs tens of
        milliseconds on a server database)."""
        subscribers = [
            Subscriber(
                username,
                domain,
                compute_ha1(username, domain, password, "MD5"),
                compute_ha1(username, domain, password, "SHA-256"),
            )
            for username in usernames
        ]

        async def add_all(storage: Storage) -> None:
            for subscriber in subscribers:
                await storage.subscribers.add(subscriber)

        self._with_storage(add_all)

    def add_lb_target(self, pool: str, node: RoleProcess | str, weight: int = 1) -> str:
        """Put a role (or a URI) in one of the LB's pools; returns the target URI."""
        uri = node if isinstance(node, str) else f"sip:127.0.0.1:{node.port}"
        self._with_storage(lambda storage: storage.lb_targets.add(pool, uri, weight=weight))
        return uri

    def remove_lb_target(self, pool: str, uri: str) -> None:
        self._with_storage(lambda storage: storage.lb_targets.remove(pool, uri))

    def bindings(self, username: str, domain: str) -> list[Binding]:
        result: list[Binding] = self._with_storage(
            lambda storage: storage.location.lookup(Aor(username, domain))
        )
        return result

    def _with_storage(self, work: Any) -> Any:
        async def run() -> Any:
            storage = open_storage(self.dsn)
            try:
                return await work(storage)
            finally:
                await storage.close()

        return asyncio.run(run())


def lb_listener(cluster: Cluster, transport: str) -> tuple[str, int]:
    """(host, port) of the running LB's one ``transport`` listener (tls, ws, ...)."""
    listen = cluster.roles["lb"].config.lb.listen
    (found,) = [address for address in listen if address.transport == transport]
    return found.host, found.port


@contextlib.contextmanager
def running_cluster(workdir: Path, **kwargs: Any) -> Iterator[Cluster]:
    cluster = Cluster(workdir, **kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


# -- a scripted UA: what sipp cannot do (keep one TCP connection from registering to being
# called, watch keepalive pings arrive, notice its connection being closed) ---------------
PING = "ping"  # what recv returns for a CRLF keepalive


class RawUa:
    def __init__(self, lb: tuple[str, int], transport: str = "udp", host: str = "127.0.0.1"):
        self.lb = lb
        self.transport = transport
        self.certificate = b""  # TLS: the server's, as DER
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, 0))
        elif transport == "tls":  # the LB's certificate is read, not trusted (self-signed)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.sock = context.wrap_socket(socket.create_connection(lb, timeout=5))
            self.certificate = self.sock.getpeercert(binary_form=True) or b""
        else:
            self.sock = socket.create_connection(lb, timeout=5)
        self.host, self.port = self.sock.getsockname()[:2]
        self._framer = StreamFramer()
        self._queue: list[Message | str] = []
        self.closed = False

    def close(self) -> None:
        self.sock.close()

    # -- sending --------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.lb)
        else:
            self.sock.sendall(data)

    def request(
        self,
        method: str,
        uri: str,
        *,
        user: str = "alice",
        expires: int | None = None,
        routes: tuple[str, ...] = (),
        call_id: str | None = None,
        via_host: str | None = None,
    ) -> str:
        """Send a request; returns its Call-ID."""
        call_id = call_id or secrets.token_hex(8)
        via = f"{via_host or self.host}:{self.port}"
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {via};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@example.com>;tag={secrets.token_hex(4)}",
            f"To: <sip:{user}@example.com>",
            f"Call-ID: {call_id}",
            f"CSeq: 1 {method}",
            f"Contact: <sip:{user}@{via};transport={self.transport}>",
            *([f"Expires: {expires}"] if expires is not None else []),
            *[f"Route: {route}" for route in routes],
            "Content-Length: 0",
        ]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return call_id

    def answer(self, request: Request, status: int, to_tag: str = "uatag") -> None:
        response = make_response(request, status, to_tag=to_tag)
        for value in request.header_values("record-route"):
            response.add_header("Record-Route", value)
        response.add_header(
            "Contact", f"<sip:ua@{self.host}:{self.port};transport={self.transport}>"
        )
        self.send(response.serialize())

    # -- receiving ---------------------------------------------------------------------
    def recv(self, timeout: float = 5.0) -> Message | str | None:
        """The next message (or PING), None when nothing came in time or it closed."""
        deadline = time.monotonic() + timeout
        while not self._queue:
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
                return None
            except OSError:
                self.closed = True
                return None
            self._take(data)
        return self._queue.pop(0)

    def _take(self, data: bytes) -> None:
        if self.transport == "udp":
            if data.strip(b"\r\n") == b"":
                self._queue.append(PING)
            else:
                self._queue.append(parse_message(data))
            return
        if not data:
            self.closed = True
            return
        for item in self._framer.feed(data):
            if isinstance(item, bytes):
                self._queue.append(parse_message(item, 65535, True))
            elif isinstance(item, KeepAlivePing):
                self._queue.append(PING)

    def expect_request(self, method: str, timeout: float = 5.0) -> Request:
        """The next request of ``method``, answering keepalive OPTIONS on the way."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.recv(left)
            if isinstance(message, Request):
                if message.method == method:
                    return message
                if message.method == "OPTIONS":
                    self.answer(message, 200)
        raise AssertionError(f"no {method} within {timeout} s")

    def final_response(self, timeout: float = 5.0) -> Response:
        """The next final response, whatever its status (provisionals skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.recv(left)
            if isinstance(message, Response) and message.status >= 200:
                return message
        raise AssertionError(f"no final response within {timeout} s")

    def expect_response(self, status: int, timeout: float = 5.0) -> Response:
        message = self.final_response(timeout)
        assert message.status == status, f"{message.status} {message.reason}"
        return message
