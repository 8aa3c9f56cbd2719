"""A real rtpengine (Debian's rtpengine-daemon) for call_bench's ``--media-relay``.

Userspace forwarding (no kernel table), no config file, Redis or recording; the ng and
CLI ports free loopback ports; stopped by its PID. Its media ports lie below the
kernel's ephemeral range (32768-) so they cannot take a port that ``free_udp_port()``
just handed to a sipp or a proxy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_udp_port, stop
from sipfleet.media.bencode import Value, decode
from sipfleet.media.errors import BencodeError

RTPENGINE = "/usr/bin/rtpengine"
PORT_MIN = 10000
PORT_CAP = 25000  # below the ephemeral range (and the 256xx ports services here listen on)
PORTS_PER_CALL = 4  # RTP + RTCP for each of the two legs of one m= line
HOLD_S = 4.0  # a call's life in the relay, offer to delete, with room for retransmitted BYEs


@dataclass(frozen=True)
class Relay:
    process: subprocess.Popen[bytes]
    ng_port: int
    port_max: int

    @property
    def config(self) -> str:
        return f"udp:127.0.0.1:{self.ng_port}"


def port_max_for(rate: int) -> int:
    """Enough media ports for ``rate`` calls/s held ``HOLD_S`` each, within the cap."""
    return min(PORT_CAP, PORT_MIN + int(PORTS_PER_CALL * rate * HOLD_S))


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ng(port: int, command: bytes, timeout: float = 0.5) -> bytes:
    """One ng command (bencoded) with a fresh cookie: rtpengine answers a repeated
    cookie from its cache. The reply's dictionary, b"" when none came."""
    cookie = os.urandom(6).hex().encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            sock.sendto(cookie + b" " + command, ("127.0.0.1", port))
            reply = sock.recv(65536)
            if reply.startswith(cookie + b" "):
                return reply[len(cookie) + 1 :]
    return b""


def _field(value: Value, *keys: bytes) -> int:
    """The integer at ``keys`` down nested dictionaries; -1 if anything is missing."""
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return -1
        value = value[key]
    return value if isinstance(value, int) else -1


COMMANDS = ("offer", "answer", "delete")


def relay_counts(port: int) -> dict[str, int]:
    """ng ``statistics``: the offers, answers and deletes the relay has handled in all,
    and the calls it holds now ("open"); -1 for what it did not say."""
    try:
        stats = decode(ng(port, b"d7:command10:statisticse"))
    except BencodeError:
        stats = {}
    counts = {
        name: _field(stats, b"statistics", b"controlstatistics", f"total{name}count".encode())
        for name in COMMANDS
    }
    counts["open"] = _field(stats, b"statistics", b"currentstatistics", b"sessionsown")
    return counts


@contextlib.contextmanager
def running_rtpengine(workdir: Path, max_rate: int) -> Iterator[Relay]:
    """rtpengine on 127.0.0.1 with ports sized for ``max_rate``; yields once it pongs."""
    ng_port, port_max = free_udp_port(), port_max_for(max_rate)
    argv = [
        RTPENGINE, "--config-file=none", "--foreground", "--log-stderr",
        "--log-level=4",  # warnings only: per-command info lines would cost it CPU
        f"--listen-cli=127.0.0.1:{_free_tcp_port()}", "--interface=127.0.0.1",
        f"--listen-ng=127.0.0.1:{ng_port}", f"--port-min={PORT_MIN}", f"--port-max={port_max}",
        "--table=-1",  # userspace forwarding: no kernel module
        f"--pidfile={workdir / 'rtpengine.pid'}", "--delete-delay=0",
    ]  # fmt: skip
    log = workdir / "rtpengine.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while b"pong" not in ng(ng_port, b"d7:command4:pinge", 0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"rtpengine did not start:\n{log.read_text()[-2000:]}")
        yield Relay(process, ng_port, port_max)
    finally:
        stop(process, timeout=5)
