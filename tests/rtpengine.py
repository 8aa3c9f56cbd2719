"""A real rtpengine (Debian's rtpengine-daemon, userspace forwarding) for the tests.

Started in the foreground as a child of the test, on ports the test chose, with no
kernel table, no Redis and no recording; stopped by its PID. ``wrap`` runs it inside a
network namespace the test made (``Namespace.argv``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RTPENGINE = "/usr/bin/rtpengine"
START_TIMEOUT_S = 10.0


def why_no_rtpengine() -> str | None:
    if shutil.which("rtpengine") is None and not Path(RTPENGINE).exists():
        return "rtpengine is not installed (scripts/setup.sh --test installs rtpengine-daemon)"
    return None


@dataclass(frozen=True)
class Rtpengine:
    process: subprocess.Popen[bytes]
    ng_host: str
    ng_port: int
    log: Path

    @property
    def ng_address(self) -> str:
        return f"{self.ng_host}:{self.ng_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _wait_for_pong(host: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """rtpengine answers an ng ``ping`` once it is ready (bencode: ``d7:command4:pinge``)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                probe.sendto(b"ready d7:command4:pinge", (host, port))
                if b"pong" in probe.recv(512):
                    return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"rtpengine did not answer on {host}:{port}: {log.read_text()[-2000:]}")


@contextmanager
def running_rtpengine(
    workdir: Path,
    *,
    interface: str = "127.0.0.1",
    ng_host: str = "127.0.0.1",
    ng_port: int,
    port_min: int = 35000,
    port_max: int = 35999,
    wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
    check_ready: bool = True,
) -> Iterator[Rtpengine]:
    """rtpengine relaying media on ``interface``, controlled over ng at ng_host:ng_port.

    ``check_ready``: ping it from here (only when the test can reach ``ng_host``: not
    from outside the namespace that ``wrap`` puts it in)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"rtpengine-{ng_port}.log"
    argv = [
        RTPENGINE,
        "--config-file=none",  # not Debian's /etc/rtpengine/rtpengine.conf (fixed ports)
        f"--listen-cli={ng_host}:{_free_tcp_port(ng_host) if check_ready else ng_port + 1}",
        "--foreground",
        "--log-stderr",
        "--log-level=6",
        f"--interface={interface}",
        f"--listen-ng={ng_host}:{ng_port}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--table=-1",  # userspace forwarding: no kernel module
        f"--pidfile={workdir / f'rtpengine-{ng_port}.pid'}",
        "--delete-delay=0",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(wrap(argv), stdout=out, stderr=subprocess.STDOUT)
    try:
        if check_ready:
            _wait_for_pong(ng_host, ng_port, process, log)
        yield Rtpengine(process, ng_host, ng_port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
