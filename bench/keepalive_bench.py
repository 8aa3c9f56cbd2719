"""NAT keepalive cost: one LB pinging 100,000 registered flows every 30 s.

    sudo .venv/bin/python bench/keepalive_bench.py                  # OPTIONS and CRLF
    sudo .venv/bin/python bench/keepalive_bench.py --flows 20000 --methods crlf

Runs in a network namespace of its own (``unshare --net``, root), so that 100,000
distinct client addresses (127.1.x.y on a few ports) can all reach one sink bound to the
namespace's wildcard address, and nothing leaves it. The flows are written to the
``location`` table as the registrar would write them through the LB (a binding with the
LB's flow token); the LB (one worker) takes them back with its one start-up query, then
pings each once per interval, spread over it. The sink answers OPTIONS with 200 and
counts which flows it saw. Measured over one whole interval after a warm-up: CPU % of
one core of the LB process (utime+stime from /proc), pings per second, and the share of
flows pinged exactly once in that interval.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sipfleet.sip.flow import Flow, FlowTokens  # noqa: E402

SECRET = "keepalive-bench"
LB_ID = 1
SINK_PORTS = (40001, 40002, 40003, 40004)
LB_PORT = 5060
HZ = os.sysconf("SC_CLK_TCK")
OK_TEMPLATE = "SIP/2.0 200 OK\r\n{via}\r\n{from_}\r\n{to};tag=sink\r\n{call_id}\r\n{cseq}\r\n"


def flow_address(n: int) -> tuple[str, int]:
    host = n // len(SINK_PORTS)
    return f"127.1.{host // 250}.{host % 250 + 1}", SINK_PORTS[n % len(SINK_PORTS)]


def write_flows(database: Path, flows: int, lifetime: int) -> None:
    """``flows`` bindings, each with its own flow token, as a registrar stores them."""
    tokens = FlowTokens(SECRET.encode())
    now = int(time.time())
    rows = []
    for n in range(flows):
        host, port = flow_address(n)
        token = tokens.encode(Flow("udp", host, port, 0, 0, True, LB_ID))
        rows.append(
            (uuid.uuid4().hex, f"u{n}", "example.com", f"sip:u{n}@10.0.0.1:5060", None,
             f"<sip:{token}@127.0.0.1:{LB_PORT};lr>", now + lifetime, None, f"c{n}", 1, now,
             0, 0, None, f"udp:127.0.0.1:{LB_PORT}", None, None, None, token)
        )  # fmt: skip
    columns = (
        "ruid, username, domain, contact, received, path, expires, q, callid, cseq, "
        "last_modified, flags, cflags, user_agent, socket, methods, instance, reg_id, flow"
    )
    with sqlite3.connect(database) as db:
        db.executemany(f"INSERT INTO location ({columns}) VALUES (?{', ?' * 18})", rows)


# -- the sink ---------------------------------------------------------------------------------
class Sink(asyncio.DatagramProtocol):
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: dict[str, int] = {}
        self.counting = False
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if not data.startswith(b"OPTIONS"):
            if self.counting:  # a CRLF ping: counted by the address it went to (unknown
                self.seen[f"crlf{self.received}"] = 1  # here: count the datagrams)
            return
        text = data.decode("latin-1")
        head = text.split("\r\n")
        target = head[0].split()[1]
        if self.counting:
            self.seen[target] = self.seen.get(target, 0) + 1
        if self.answer and self.transport is not None:
            fields = {line.split(":", 1)[0].lower(): line for line in head[1:] if ":" in line}
            answer = OK_TEMPLATE.format(
                via=fields["via"],
                from_=fields["from"],
                to=fields["to"],
                call_id=fields["call-id"],
                cseq=fields["cseq"],
            )
            self.transport.sendto((answer + "Content-Length: 0\r\n\r\n").encode(), addr)


def cpu_ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


async def measure(args: argparse.Namespace, method: str, workdir: Path) -> dict[str, float]:
    database = workdir / f"{method}.db"
    python = sys.executable
    config = workdir / f"{method}.toml"
    config.write_text(
        f'[node]\nname = "ka-bench"\ndata_dir = "{workdir}"\ncluster_secret = "{SECRET}"\n'
        f'[database]\nwrite = "sqlite:///{database}"\n'
        f'[lb]\nlisten = ["udp:127.0.0.1:{LB_PORT}"]\nid = {LB_ID}\n'
        f'keepalive_method = "{method}"\nkeepalive_interval_s = {args.interval}\n'
    )
    subprocess.run(
        [python, "-m", "sipfleet", "db", "upgrade", "-c", str(config)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    write_flows(database, args.flows, lifetime=3600)
    loop = asyncio.get_running_loop()
    sinks = []
    for port in SINK_PORTS:
        _, sink = await loop.create_datagram_endpoint(
            lambda: Sink(answer=method == "options"),
            local_addr=("0.0.0.0", port),  # the namespace has only its loopback
        )
        sinks.append(sink)
    log = workdir / f"{method}-lb.log"
    ready = workdir / f"{method}.ready"
    with log.open("wb") as out:
        lb = subprocess.Popen(
            [python, "-m", "sipfleet", "run", "lb", "-c", str(config), "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        started = time.time()
        while not ready.exists():
            if lb.poll() is not None or time.time() - started > 120:
                raise RuntimeError(f"the LB did not start: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        rebuilt = _rebuild_seconds(log.read_text())
        await asyncio.sleep(args.warmup)
        if rebuilt < 0:
            rebuilt = _rebuild_seconds(log.read_text())
        for sink in sinks:
            sink.counting = True
        before, t0 = cpu_ticks(lb.pid), time.time()
        await asyncio.sleep(args.interval)
        cpu = 100.0 * (cpu_ticks(lb.pid) - before) / HZ / (time.time() - t0)
        for sink in sinks:
            sink.counting = False
        counts: list[int] = [n for sink in sinks for n in sink.seen.values()]
    finally:
        lb.terminate()
        lb.wait(timeout=20)
        for sink in sinks:
            if sink.transport is not None:
                sink.transport.close()
    pings = sum(counts)
    once = sum(1 for n in counts if n == 1)
    return {
        "cpu_pct": round(cpu, 1),
        "pings_per_s": round(pings / args.interval, 1),
        "flows_pinged_once_pct": round(100.0 * once / args.flows, 1) if method == "options" else -1,
        "rebuild_s": rebuilt,
    }


def _rebuild_seconds(text: str) -> float:
    found = re.search(r"keepalive table rebuilt: \d+ flows in ([\d.]+) s", text)
    return float(found.group(1)) if found else -1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--methods", default="options,crlf")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            sys.exit("keepalive_bench needs root and unshare (a network namespace of its own)")
        script = f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --inside"
        extra = " ".join(f"'{a}'" for a in sys.argv[1:])
        sys.exit(subprocess.call(["unshare", "--net", "--", "sh", "-c", f"{script} {extra}"]))
    from sipfleet.transport.loop import run

    with tempfile.TemporaryDirectory(prefix="ka-bench-") as tmp:
        for method in args.methods.split(","):
            result = run(measure(args, method, Path(tmp)))
            print(
                f"{method:8} flows {args.flows}  interval {args.interval:.0f} s  "
                f"LB CPU {result['cpu_pct']:.1f} % of a core  "
                f"pings/s {result['pings_per_s']:.0f}  "
                + (
                    f"flows pinged exactly once {result['flows_pinged_once_pct']:.1f} %  "
                    if method == "options"
                    else ""
                )
                + f"start-up rebuild {result['rebuild_s']:.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
