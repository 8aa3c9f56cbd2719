"""The interop lab: `sipfleet up` exactly as the README starts it, each in a network
namespace of its own.

An embedded cluster has no config file and no config-changing environment. It runs in a
network namespace we create (its own loopback, so 127.0.0.1:5060 is free whatever the host
runs) and in a private mount namespace where a directory of the test is bind-mounted on
``/var/lib/sipfleet`` (the product's data directory when root). Every CLI command of the
test (``Embedded.sipfleet``) runs in the same network namespace behind the same bind mount,
so it sees the same database, as the README's second shell does.

Everything started here is stopped by PID, and every namespace made here is deleted.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.sipp import SippRun, sipp_binary, stop_sipp

DATA_DIR = Path("/var/lib/sipfleet")  # default_data_dir() for root
BANNER = "sipfleet is up"
START_TIMEOUT = 90.0  # three roles, each given 30 s by `up`; the machine is shared
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0
# Variables that would change the configuration `sipfleet up` builds (config/load.py).
CONFIG_VARIABLES = ("SIPFLEET_CLUSTER_SECRET", "SIPFLEET_DATA_DIR", "SIPFLEET_DB_WRITE")

_NAME_OK = re.compile(r"[^a-z0-9]")


def why_no_lab() -> str | None:
    """Why the lab cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "the interop lab needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not sipfleet_script().exists():
        return f"{sipfleet_script()} is missing (run scripts/setup.sh --test)"
    return None


def sipfleet_script() -> Path:
    """The `sipfleet` entry point of the virtualenv running the tests (.venv/bin/sipfleet)."""
    return Path(sys.executable).parent / "sipfleet"


def product_env() -> dict[str, str]:
    """The test's environment without the variables that reconfigure sipfleet."""
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env.pop("XDG_DATA_HOME", None)  # only matters for non-root, but keep it the user's
    return env


def _short_name(hint: str) -> str:
    cleaned = _NAME_OK.sub("", hint.lower())[:6]
    return f"sfi{cleaned}{secrets.token_hex(3)}"


class Namespace:
    """One network namespace we created, with its loopback up; deleted on ``close``."""

    def __init__(self, name_hint: str) -> None:
        self.name = _short_name(name_hint)
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=10)
        self._open = True
        try:
            self.run(["ip", "link", "set", "lo", "up"], check=True)
        except BaseException:
            self.close()
            raise

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` does not fork: the PID of
        a process started with this prefix is the PID of ``argv``)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(argv), **kw)

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        kw.setdefault("timeout", COMMAND_TIMEOUT)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        return subprocess.run(self.argv(argv), **kw)

    def pids(self) -> list[int]:
        listed = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=10
        )
        return [int(word) for word in listed.stdout.split() if word.isdigit()]

    def close(self) -> None:
        """Stop what is left in the namespace (only our processes live there), delete it."""
        if not self._open:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            left = self.pids()
            for pid in left:
                with suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + 5
            while left and time.monotonic() < deadline:
                left = [pid for pid in left if _alive(pid)]
                if left:
                    time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", self.name], timeout=10, check=False)
        self._open = False

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it holds no socket and no namespace any more
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def with_data_dir(data: Path, argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace where ``data`` is mounted on /var/lib/sipfleet.

    The mount point is made if missing (an empty directory on the host; nothing is ever
    written to it there: every write goes to ``data`` through the bind mount).
    """
    script = 'mkdir -p "$1" && mount --bind "$2" "$1" && shift 2 && exec "$@"'
    return [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", script, "sh", str(DATA_DIR), str(data), *argv,
    ]  # fmt: skip


class Embedded:
    """`sipfleet up` as the README starts it, no config file, inside ``ns``."""

    lb_host: str = "127.0.0.1"
    lb_port: int = 5060

    def __init__(self, ns: Namespace, workdir: Path, up_args: tuple[str, ...] = ()) -> None:
        self.ns = ns
        self.workdir = workdir
        self.data_dir = workdir / "var-lib-sipfleet"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "sipfleet-up.log"
        self.up_args = up_args
        self.process: subprocess.Popen[bytes] | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` as it runs in this cluster's namespace, seeing its data directory."""
        return self.ns.argv(with_data_dir(self.data_dir, argv))

    def start(self) -> None:
        command = with_data_dir(self.data_dir, [str(sipfleet_script()), "up", *self.up_args])
        with self.log_path.open("wb") as log:
            self.process = self.ns.popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=product_env(),
                cwd=self.workdir,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while BANNER not in self.log_text():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sipfleet up exited ({self.process.returncode}):\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {BANNER!r} within {START_TIMEOUT} s:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to `sipfleet up` (its PID), which stops its roles; SIGKILL if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def sipfleet(
        self, *args: str, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``sipfleet ARGS`` in the README's second shell: same namespace, same database."""
        return subprocess.run(
            self.wrap([str(sipfleet_script()), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=product_env(),
            cwd=self.workdir,
            check=False,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def embedded_cluster(
    tmp: Path,
    name_hint: str,
    *,
    ns: Namespace | None = None,
    up_args: tuple[str, ...] = (),
) -> Iterator[Embedded]:
    """`sipfleet up` (plus ``up_args``, e.g. ``("--listen", "203.0.113.10:5060")``) in a
    new namespace, or in ``ns`` when given (then the caller owns and deletes ``ns``).
    Yields once the banner is printed; stops it by PID and deletes the namespace after."""
    own = ns is None
    namespace = Namespace(name_hint) if ns is None else ns
    try:
        embedded = Embedded(namespace, tmp, up_args)
        if up_args[:1] == ("--listen",) and len(up_args) > 1:
            host, _, port = up_args[1].rpartition(":")
            embedded.lb_host, embedded.lb_port = host.strip("[]"), int(port)
        try:
            embedded.start()
            yield embedded
        finally:
            embedded.stop()
    finally:
        if own:
            namespace.close()


# --- phones: sipp inside a namespace ------------------------------------------------------

SCENARIOS = Path(__file__).parent / "scenarios"
STOPPED = -int(signal.SIGTERM)  # the exit code of a phone we had to stop


@dataclass
class Phone:
    """One sipp run of a phone: where it runs, what it plays, its message trace."""

    ns: Namespace
    scenario: str
    trace: Path  # every message sent and received (-trace_msg)
    errors: Path
    screen: Path  # its stdout and stderr (a file: a pipe nobody reads would block it)
    process: subprocess.Popen[bytes]

    def wait(self, timeout: float) -> SippRun:
        """Its result once it has played its scenario. Not done within ``timeout``: it is
        stopped by PID and never counts as ok (sipp may exit 0 on SIGTERM)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = stop_sipp(self.process, wait=0) or STOPPED
        return SippRun(
            code,
            self.trace.read_text(errors="replace") if self.trace.exists() else "",
            self.errors.read_text(errors="replace") if self.errors.exists() else "",
            self.screen.read_text(errors="replace") if self.screen.exists() else "",
        )


def wait_listening(ns: Namespace, port: int, transport: str, timeout: float = 10.0) -> None:
    """Until something in ``ns`` listens on ``port`` (a phone waiting for calls is ready)."""
    flags = "-ltnH" if transport == "tcp" else "-lunH"
    deadline = time.monotonic() + timeout
    while not ns.run(["ss", flags, f"sport = :{port}"]).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {transport} port {port} in {ns.name}")
        time.sleep(0.02)


def start_phone(
    ns: Namespace,
    scenario: str,
    workdir: Path,
    *,
    address: str = "127.0.0.1",
    port: int,
    target: str | None = None,
    transport: str = "udp",
    keys: dict[str, str] | None = None,
    credentials: tuple[str, str] | None = None,
    timeout: float = 15.0,
    calls: int = 1,
    extra: tuple[str, ...] = (),
) -> Phone:
    """sipp playing ``scenarios/<scenario>.xml`` in ``ns`` from ``address:port`` (to
    ``target`` host:port; none: it waits for calls, and is returned once it listens),
    ``calls`` calls, bounded by ``timeout``."""
    name = f"{scenario}-{transport}-{port}"
    trace, errors = workdir / f"{name}.msg", workdir / f"{name}.err"
    screen = workdir / f"{name}.out"
    command = [
        sipp_binary(), *([target] if target else []),
        "-sf", str(SCENARIOS / f"{scenario}.xml"),
        "-i", address, "-p", str(port), "-m", str(calls),
        "-t", "t1" if transport == "tcp" else "u1",
        "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin",
        "-trace_msg", "-message_file", str(trace),
        "-trace_err", "-error_file", str(errors),
        "-max_recv_loops", "1000",
    ]  # fmt: skip
    for key, value in (keys or {}).items():
        command += ["-key", key, value]
    if credentials is not None:
        command += ["-au", credentials[0], "-ap", credentials[1]]
    command += list(extra)
    with screen.open("wb") as out:
        process = ns.popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    phone = Phone(ns, scenario, trace, errors, screen, process)
    if target is None:
        try:
            wait_listening(ns, port, transport)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{phone.wait(1).explain()}") from None
    return phone


def sip_messages(trace: str, direction: str) -> list[str]:
    """The SIP messages of a sipp -trace_msg file that were ``sent`` or ``received``."""
    found = []
    for entry in re.split(r"^-{10,} .*$", trace, flags=re.MULTILINE):
        head, _, message = entry.strip("\n").partition("\n")
        if f"message {direction}" in head:
            found.append(message.lstrip("\n").replace("\r\n", "\n"))
    return found


def first_line(message: str) -> str:
    return message.split("\n", 1)[0].strip()


def body(message: str) -> str:
    return message.split("\n\n", 1)[1] if "\n\n" in message else ""


def find_message(trace: str, direction: str, start: str, with_body: bool = False) -> list[str]:
    """The messages whose first line starts with ``start`` (e.g. "INVITE ", "SIP/2.0 200")."""
    return [
        m
        for m in sip_messages(trace, direction)
        if first_line(m).startswith(start) and (body(m).strip() or not with_body)
    ]
