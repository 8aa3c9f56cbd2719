"""Calls per second through the stateful proxy, with the callee looked up in SQL.

Each call is INVITE -> 100/180/200 -> ACK -> BYE -> 200, driven by a sipp UAC at a fixed
rate against a sipp UAS whose users c00001..cNNNNN are bindings in the database (written
before the run, like the Kamailio anchor seeds its usrloc table). The proxy runs as
``sipfleet run proxy`` with authentication off (the anchor's Kamailio does not
authenticate either). For each rate it prints the calls that succeeded per second
and the proxy's CPU per call, sampled from /proc/<pid>/stat over the steady window.

    .venv/bin/python bench/call_bench.py --rates 300,600,900 --duration 10
    .venv/bin/python bench/call_bench.py --mariadb ...   # a private MariaDB, like the anchor

Every step is bounded: ``rate * duration`` calls, sipp ``-timeout duration + 15`` s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sipfleet.config import config_from_dict
from sipfleet.storage import Aor, BindingUpdate, open_storage
from sipfleet.storage.dsn import Dsn
from sipfleet.storage.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "integration" / "scenarios"
DOMAIN = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds: Python work vs. system calls."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


async def seed(dsn: str, users: int, uas_port: int) -> None:
    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    now = int(time.time())
    try:
        for start in range(1, users + 1, 200):
            saves = []
            for i in range(start, min(start + 200, users + 1)):
                user = f"c{i:05d}"
                update = BindingUpdate(
                    f"sip:{user}@127.0.0.1:{uas_port}", now + 86400, f"seed-{user}", 1
                )
                saves.append(
                    storage.location.save(Aor(user, DOMAIN), [update], now=now, max_contacts=10)
                )
            await asyncio.gather(*saves)
    finally:
        await storage.close()


@dataclass
class Step:
    rate: int
    created: int
    successful: int
    failed: int
    achieved: float  # successful calls/s in the measured window
    proxy_cpu: float  # % of one core in the window
    sipp_cpu: float  # UAC + UAS, % of one core
    proxy_system_share: float = 0.0  # of the proxy's CPU, the part spent in the kernel
    db_cpu: float = 0.0  # the database server (MariaDB), % of one core

    @property
    def shed(self) -> int:
        """Calls the proxy refused with 503 (stopped by the UAC, neither ok nor failed)."""
        return self.created - self.successful - self.failed

    @property
    def db_us_per_call(self) -> float:
        return self.db_cpu / 100 / max(self.achieved, 1e-9) * 1e6

    @property
    def us_per_call(self) -> float:
        return self.proxy_cpu / 100 / max(self.achieved, 1e-9) * 1e6

    @property
    def passed(self) -> bool:
        return (
            self.created > 0
            and (self.created - self.successful) / self.created < 0.01
            and self.achieved >= 0.97 * self.rate
        )


def sipp_stats(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    lines = [
        line.rstrip("\n").rstrip(";") for line in path.read_text().splitlines() if line.strip()
    ]
    if len(lines) < 2:
        return []
    header = lines[0].split(";")
    return [dict(zip(header, line.split(";"), strict=False)) for line in lines[1:]]


def stat_time(row: dict[str, str]) -> float:
    return float(row["CurrentTime"].split("\t")[-1])


def run_step(args: argparse.Namespace, rate: int, target: str, proxy_pid: int, uas_pid: int,
             workdir: Path, callees: Path, db_pid: int | None) -> Step:  # fmt: skip
    stats = workdir / f"uac-{rate}.csv"
    stats.unlink(missing_ok=True)
    command = [
        "sipp", target, "-sf", str(SCENARIOS / "proxy_uac_call.xml"), "-inf", str(callees),
        "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(rate), "-rp", "1000",
        "-m", str(rate * args.duration), "-l", str(2 * rate),
        "-timeout", f"{args.duration + 15}s", "-recv_timeout", "5000", "-nostdin",
        "-default_behaviors", "all,-abortunexp", "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-buff_size", "4194304", "-max_recv_loops", "10000",
    ]  # fmt: skip
    started = time.time()
    uac = subprocess.Popen(
        command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    warm = min(3.0, args.duration / 4)
    time.sleep(warm)
    before = [cpu_seconds(pid) for pid in (proxy_pid, uac.pid, uas_pid)]
    db_before = cpu_seconds(db_pid) if db_pid else 0.0
    split_before = cpu_split(proxy_pid)
    t0 = time.time()
    time.sleep(max(1.0, args.duration - 1 - warm))
    after = [cpu_seconds(pid) for pid in (proxy_pid, uac.pid, uas_pid)]
    db_after = cpu_seconds(db_pid) if db_pid else 0.0
    split_after = cpu_split(proxy_pid)
    window = time.time() - t0
    try:
        uac.wait(timeout=args.duration + 25)
    except subprocess.TimeoutExpired:
        uac.kill()
        uac.wait()
    rows = sipp_stats(stats)
    if not rows:
        return Step(rate, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
    last = rows[-1]
    measured = [r for r in rows if started + warm <= stat_time(r) <= started + args.duration - 0.5]
    if len(measured) >= 2:
        calls = int(measured[-1]["SuccessfulCall(C)"]) - int(measured[0]["SuccessfulCall(C)"])
        achieved = calls / (stat_time(measured[-1]) - stat_time(measured[0]))
    else:
        achieved = int(last["SuccessfulCall(C)"]) / max(time.time() - started, 1e-9)
    cpu = [(b - a) / window * 100 for a, b in zip(before, after, strict=True)]
    system_share = (split_after[1] - split_before[1]) / max(after[0] - before[0], 1e-9)
    return Step(
        rate,
        int(last["OutgoingCall(C)"]),
        int(last["SuccessfulCall(C)"]),
        int(last["FailedCall(C)"]),
        achieved,
        cpu[0],
        cpu[1] + cpu[2],
        system_share,
        (db_after - db_before) / window * 100,
    )


def start_proxy(workdir: Path, dsn: str, port: int) -> subprocess.Popen[bytes]:
    text = (
        f'[node]\nname = "bench-proxy"\ndata_dir = "{workdir}"\ncluster_secret = "bench"\n\n'
        f'[database]\nwrite = "{dsn}"\n\n[sip]\ndomains = ["{DOMAIN}"]\n\n'
        f'[proxy]\nlisten = ["udp:127.0.0.1:{port}"]\nauthenticate = false\n'
    )
    config_from_dict(tomllib.loads(text))  # fail here, not in the child, on a bad key
    path = workdir / "proxy.toml"
    path.write_text(text)
    ready = workdir / "proxy.ready"
    log = (workdir / "proxy.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sipfleet.cli", "run", "proxy", "-c", str(path),
         "--ready-file", str(ready), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise SystemExit(f"proxy did not start:\n{(workdir / 'proxy.log').read_text()}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="300,600,900", help="calls/s, comma-separated")
    parser.add_argument("--duration", type=int, default=10, help="seconds per step (<= 60)")
    parser.add_argument("--users", type=int, default=1000, help="callees in the database")
    parser.add_argument("--db", default="", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--mariadb", action="store_true", help="start a private MariaDB (tests/dbservers.py)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line per step")
    args = parser.parse_args()
    args.duration = max(4, min(args.duration, 60))
    rates = [int(r) for r in args.rates.split(",") if r.strip()][:10]
    workdir = Path(tempfile.mkdtemp(prefix="sipfleet-call-bench-"))
    server = None
    if args.mariadb:
        sys.path.insert(0, str(ROOT))
        from tests.dbservers import start_mariadb

        server = start_mariadb()
        args.db = server.create_database("callbench")
    db_pid = server.process.pid if server is not None and server.process else None
    dsn = args.db or f"sqlite:///{workdir / 'sipfleet.db'}"
    uas_port, proxy_port = free_port(), free_port()
    asyncio.run(seed(dsn, args.users, uas_port))
    callees = workdir / "callees.csv"
    users = "\n".join(f"c{i:05d};{DOMAIN}" for i in range(1, args.users + 1))
    callees.write_text(f"SEQUENTIAL\n{users}\n")
    proxy = start_proxy(workdir, dsn, proxy_port)
    total_calls = sum(rates) * args.duration
    uas = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "proxy_uas_answer.xml"), "-i", "127.0.0.1",
         "-p", str(uas_port), "-m", str(total_calls), "-nostdin", "-buff_size", "4194304",
         "-timeout", f"{len(rates) * (args.duration + 30)}s", "-max_recv_loops", "10000"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        print(f"proxy pid {proxy.pid}, {args.users} callees, database {dsn.split('://')[0]}")
        print(
            " rate  created  ok      failed  503     achieved/s  proxy %core  proxy us/call  kernel"
            "  db us/call  sipp %core  load"
        )
        for rate in rates:
            step = run_step(
                args, rate, f"127.0.0.1:{proxy_port}", proxy.pid, uas.pid, workdir, callees, db_pid
            )
            if args.json:
                print(
                    json.dumps(
                        {
                            **step.__dict__,
                            "us_per_call": step.us_per_call,
                            "db_us_per_call": step.db_us_per_call,
                            "shed": step.shed,
                            "load": os.getloadavg()[0],
                            "pass": step.passed,
                        }
                    )
                )
            else:
                print(
                    f"{step.rate:5d}  {step.created:7d}  {step.successful:6d}  {step.failed:6d}"
                    f"  {step.shed:6d}"
                    f"  {step.achieved:10.1f}  {step.proxy_cpu:11.1f}  {step.us_per_call:13.0f}"
                    f"  {step.proxy_system_share:6.0%}  {step.db_us_per_call:10.0f}"
                    f"  {step.sipp_cpu:10.1f}  {os.getloadavg()[0]:4.1f}"
                    f"  {'pass' if step.passed else 'FAIL'}",
                    flush=True,
                )
            time.sleep(2)
    finally:
        stop(uas)
        stop(proxy)
        if server is not None:
            server.destroy()
        if not os.environ.get("CALL_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("kept", workdir)


if __name__ == "__main__":
    main()
