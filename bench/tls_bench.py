"""What TLS costs the LB: OPTIONS relayed over TCP and over TLS, and new connections.

    .venv/bin/python bench/tls_bench.py                          # tcp and tls, 20 connections
    .venv/bin/python bench/tls_bench.py --connections 50 --duration 10 --rounds 3

`sipfleet run lb` (one worker) listens on UDP, TCP and TLS (a self-signed P-256
certificate made here) with a sipp UAS answering OPTIONS with 200 (bench/sipp/echo_uas.xml)
as its only proxy-pool target. sipp has no TLS here, so the clients are Python (asyncio,
uvloop): ``--connections`` connections, each sending OPTIONS sip:echo@LB and waiting for
its 200 before the next (a closed loop: the rate is what the LB and the clients carry on
two shared cores), for ``--duration`` seconds. Two figures per transport:

- *relay*: the LB's CPU (its process, from /proc) per request + response pair, over
  connections made before the window;
- *connect*: ``--connects`` connections made one after another, one OPTIONS each, then
  closed: the LB's CPU per connection (accept, TLS handshake, one pair, close).

Every loop is bounded in count and time; everything started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import (  # noqa: E402
    HZ,
    free_udp_port,
    sipp,
    started,
    tree_ticks,
    wait_idle,
    wait_ready_file,
)
from sipfleet.sip import StreamFramer  # noqa: E402
from sipfleet.transport.tls import write_self_signed  # noqa: E402

TRANSPORTS = ("tcp", "tls")
MAX_PAIRS_PER_CONNECTION = 1_000_000  # a bound on every loop, far above what a window holds


@dataclass
class Figure:
    transport: str
    what: str  # relay | connect
    count: int  # pairs (relay) or connections (connect)
    seconds: float
    lb_cpu_s: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def lb_us_each(self) -> float:
        return 1e6 * self.lb_cpu_s / self.count if self.count else 0.0


def options(port: int, transport: str, local: str) -> bytes:
    branch, call_id = secrets.token_hex(8), secrets.token_hex(8)
    return (
        f"OPTIONS sip:echo@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {local};branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bench@127.0.0.1>;tag={branch[:8]}\r\n"
        f"To: <sip:echo@127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False  # the bench's own self-signed certificate
    context.verify_mode = ssl.CERT_NONE
    return context


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        host, port = writer.get_extra_info("sockname")[:2]
        self.local = f"{host}:{port}"
        self.framer = StreamFramer()
        self.messages: list[bytes] = []

    async def ask(self, request: bytes) -> None:
        """Send ``request`` and wait for its final answer (any message back)."""
        self.writer.write(request)
        while not self.messages:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the LB closed the connection")
            self.messages += [item for item in self.framer.feed(data) if isinstance(item, bytes)]
        self.messages.pop(0)


async def connect(port: int, transport: str) -> Connection:
    context = client_context() if transport == "tls" else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    return Connection(reader, writer)


async def relay(
    lb_pid: int, port: int, lb_port: int, transport: str, connections: int, duration: float
) -> Figure:
    """``connections`` closed loops of OPTIONS for ``duration`` s; the LB's CPU meanwhile."""
    opened = [await connect(port, transport) for _ in range(connections)]
    for one in opened:  # warm: every connection has carried a pair before the window
        await one.ask(options(lb_port, transport, one.local))
    done = 0
    stop_at = time.monotonic() + duration

    async def loop(one: Connection) -> None:
        nonlocal done
        for _ in range(MAX_PAIRS_PER_CONNECTION):
            if time.monotonic() >= stop_at:
                return
            await one.ask(options(lb_port, transport, one.local))
            done += 1

    before, begin = tree_ticks(lb_pid), time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(loop(one) for one in opened)), duration + 30)
    seconds, cpu = time.monotonic() - begin, (tree_ticks(lb_pid) - before) / HZ
    for one in opened:
        one.writer.close()
    return Figure(transport, "relay", done, seconds, cpu)


async def connects(lb_pid: int, port: int, lb_port: int, transport: str, count: int) -> Figure:
    """``count`` connections one after another: connect (and handshake), one pair, close."""
    before, begin = tree_ticks(lb_pid), time.monotonic()
    for _ in range(count):
        one = await asyncio.wait_for(connect(port, transport), 10)
        await asyncio.wait_for(one.ask(options(lb_port, transport, one.local)), 10)
        one.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await one.writer.wait_closed()
    seconds, cpu = time.monotonic() - begin, (tree_ticks(lb_pid) - before) / HZ
    return Figure(transport, "connect", count, seconds, cpu)


@contextlib.contextmanager
def lb(echo_port: int, workdir: Path) -> Iterator[tuple[int, dict[str, int]]]:
    """`sipfleet run lb` on UDP, TCP and TLS (one worker, no keepalives, no rate limit):
    its PID and port per transport."""
    port, tls_port = free_udp_port(), free_udp_port()
    certificate, key = workdir / "lb.crt", workdir / "lb.key"
    write_self_signed(certificate, key, ["127.0.0.1"])
    config = workdir / "lb.toml"
    config.write_text(
        f'[node]\nname = "bench-lb"\ndata_dir = "{workdir}"\ncluster_secret = "bench"\n'
        f'[database]\nwrite = "sqlite:///{workdir / "sipfleet.db"}"\n'
        f'[lb]\nlisten = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}", '
        f'"tls:127.0.0.1:{tls_port}"]\nkeepalive = false\n'
        f'tls_certificate = "{certificate}"\ntls_key = "{key}"\n'
        "[edge]\nrate_per_s = 0\n"  # one source sends all the load
    )
    cli = [sys.executable, "-m", "sipfleet"]
    subprocess.run([*cli, "db", "upgrade", "-c", str(config)], check=True)
    target = f"sip:127.0.0.1:{echo_port}"
    subprocess.run([*cli, "lb", "target", "add", target, "--pool", "proxy", "-c", str(config)])
    ready = workdir / "lb.ready"
    command = [*cli, "run", "lb", "-c", str(config), "--ready-file", str(ready)]
    with started([*command, "--log-level", "warning"], workdir / "lb.log") as (process, _):
        wait_ready_file(process, ready, workdir / "lb.log")
        time.sleep(1.5)  # the first health probe has answered
        yield process.pid, {"tcp": port, "tls": tls_port}


def report(figure: Figure) -> None:
    unit = "pairs" if figure.what == "relay" else "connections"
    print(
        f"{figure.transport:>4} {figure.what:<8} {figure.count:>7} {unit} in "
        f"{figure.seconds:5.1f} s = {figure.per_second:8.0f}/s; "
        f"LB CPU {figure.lb_us_each:7.1f} us each",
        flush=True,
    )


async def measure(args: argparse.Namespace, lb_pid: int, ports: dict[str, int]) -> list[Figure]:
    figures = []
    for _ in range(args.rounds):
        for transport in args.transports.split(","):
            port = ports[transport]
            wait_idle(lambda: tree_ticks(lb_pid))
            figure = await relay(
                lb_pid, port, ports["tcp"], transport, args.connections, args.duration
            )
            report(figure)
            figures.append(figure)
            wait_idle(lambda: tree_ticks(lb_pid))
            figure = await connects(lb_pid, port, ports["tcp"], transport, args.connects)
            report(figure)
            figures.append(figure)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per relay run")
    parser.add_argument("--connects", type=int, default=500, help="connections per connect run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux
        uvloop = None  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        workdir = Path(tmp)
        echo_port = free_udp_port()
        uas = sipp("echo_uas.xml", "-p", str(echo_port), "-timeout", "3600s")
        with started(uas, workdir / "uas.log"), lb(echo_port, workdir) as (lb_pid, ports):
            runner = uvloop.run if uvloop is not None else asyncio.run
            figures = runner(measure(args, lb_pid, ports))
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))
    print(f"(pid {os.getpid()}: done)", file=sys.stderr)


if __name__ == "__main__":
    main()
