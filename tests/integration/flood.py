"""Floods of stray requests, as a hostile network sends them: BYEs for dialogs that do
not exist and INVITEs for users that do not exist, each with a new Call-ID and branch,
paced at a fixed rate, bounded in count and time. Used by tests/integration and
bench/flood_bench.py."""

from __future__ import annotations

import itertools
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

_BATCH_S = 0.01  # sends are paced in batches of this many seconds


def stray_request(kind: str, n: int, source: tuple[str, int], target: tuple[str, int]) -> bytes:
    host, port = source
    method, user, to_tag = (
        ("BYE", "nobody", ";tag=gone") if kind == "bye" else ("INVITE", f"ghost{n}", "")
    )
    return (
        f"{method} sip:{user}@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-flood-{kind}-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:mallory@example.com>;tag=f{n}\r\n"
        f"To: <sip:{user}@example.com>{to_tag}\r\n"
        f"Call-ID: flood-{kind}-{n}@{host}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:mallory@{host}:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class FloodResult:
    sent: int = 0
    finals: dict[bytes, int] = field(default_factory=dict)  # Call-ID: first final status
    seconds: float = 0.0

    @property
    def statuses(self) -> Counter[int]:
        return Counter(self.finals.values())

    @property
    def answered(self) -> int:
        return len(self.finals)


def flood(
    target: tuple[str, int],
    count: int,
    rate: float,
    *,
    kinds: tuple[str, ...] = ("bye", "invite"),
    linger: float = 1.0,
    start: int = 0,
) -> FloodResult:
    """Send ``count`` stray requests (``kinds`` in turn) at ``rate`` per second, then
    listen ``linger`` seconds more. Each request's first final status counts (the
    server's retransmissions of it do not)."""
    result = FloodResult()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        source = sock.getsockname()
        kind = itertools.cycle(kinds)
        began = time.monotonic()
        per_batch = max(1, round(rate * _BATCH_S))
        for n in range(start, start + count):
            sock.sendto(stray_request(next(kind), n, source, target), target)
            result.sent += 1
            if result.sent % per_batch == 0:
                _drain(sock, result)
                ahead = began + result.sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        end = time.monotonic() + linger
        while time.monotonic() < end:
            _drain(sock, result)
            time.sleep(0.01)
        result.seconds = time.monotonic() - began
    return result


def _drain(sock: socket.socket, result: FloodResult) -> None:
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return
        if not (data.startswith(b"SIP/2.0 ") and data[8:11].isdigit()):
            continue
        at = data.find(b"\r\nCall-ID: ")
        if at < 0 or int(data[8:11]) < 200:
            continue
        call_id = data[at + 11 : data.find(b"\r\n", at + 11)]
        result.finals.setdefault(call_id, int(data[8:11]))


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
