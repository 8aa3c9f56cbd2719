"""Calls per second through the stateful proxy (and the LB), callees looked up in SQL.

Each call is INVITE -> 100/180/200 -> ACK -> BYE -> 200, driven by a sipp UAC at a fixed
rate against a sipp UAS whose users c00001..cNNNNN are bindings in the database (written
before the run, as the Kamailio anchor seeds its usrloc table: no Path, so the proxy
sends to the UAS directly). The proxy runs as ``sipfleet run proxy`` with
authentication off (the anchor's Kamailio does not authenticate either); with ``--lb``
the UAC talks to ``sipfleet run lb``, which hashes calls over the proxy pool, like the
anchor's k3 test (UAC -> LB -> proxy -> UAS).

For each rate: calls that succeeded per second in the steady window, calls the proxy
refused with 503 (shedding), and CPU per call of each process group (all threads, all
children) from the scheduler's exact runtime (``/proc/<pid>/task/*/schedstat``).

    .venv/bin/python bench/call_bench.py --rates 600,1200,1800 --duration 10
    .venv/bin/python bench/call_bench.py --lb --lb-workers 2 --proxies 2 --rates 900,1350
    .venv/bin/python bench/call_bench.py --proxy-workers 2 --rates 600,1200  # node.workers
    .venv/bin/python bench/call_bench.py --mariadb ...   # a private MariaDB, like the anchor
    .venv/bin/python bench/call_bench.py --lb --accounting off --rates 300,600,900
    .venv/bin/python bench/call_bench.py --lb --lb-workers 2 --mariadb --privacy-clir off \
        --users 10000 --duration 20 --rates 1200   # the anchor's s3 settings
    .venv/bin/python bench/call_bench.py --lb --media-relay --rates 300,600,900
    .venv/bin/python bench/call_bench.py --instructions --rates 20,20 --duration 20  # per call

Accounting (one ``acc`` row per answered call, written at the 200 and at the BYE) is on
as in the product unless ``--accounting off``. ``--media-relay`` starts a real rtpengine
(bench/media_relay.py) and relays every call (``[media] mode = "always"``: an ng offer
at the INVITE, an answer at the 200, a delete at the BYE); without it the proxy runs
``mode = "never"`` and tries no relay. Both scenarios carry SDP (an m=audio line) in
the INVITE and the 200 in every run, so the figures compare; no RTP flows.

Every step is bounded: ``rate * duration`` calls, sipp ``-timeout duration + 15`` s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path is set
    VALGRIND,
    all_ticks,
    callgrind_control,
    collected,
    free_udp_port,
    others_pct,
    process_tree,
    read_stats,
    sample_cpu,
    stop,
    sustained,
    window_rate,
)
from bench.media_relay import COMMANDS, PORT_MIN, Relay, relay_counts, running_rtpengine  # noqa: E402
from sipfleet.config import config_from_dict  # noqa: E402
from sipfleet.storage import Aor, BindingUpdate, open_storage  # noqa: E402
from sipfleet.storage.dsn import Dsn  # noqa: E402
from sipfleet.storage.migrate import upgrade  # noqa: E402

SCENARIOS = ROOT / "tests" / "integration" / "scenarios"
DOMAIN = "127.0.0.1"


async def seed(dsn: str, users: int, uas_port: int, lb_targets: list[str]) -> None:
    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    now = int(time.time())
    try:
        for uri in lb_targets:
            await storage.lb_targets.add("proxy", uri)
        for start in range(1, users + 1, 200):
            saves = []
            for i in range(start, min(start + 200, users + 1)):
                user = f"c{i:05d}"
                contact = f"sip:{user}@127.0.0.1:{uas_port}"
                update = BindingUpdate(contact, now + 86400, f"seed-{user}", 1)
                saves.append(
                    storage.location.save(Aor(user, DOMAIN), [update], now=now, max_contacts=10)
                )
            await asyncio.gather(*saves)
    finally:
        await storage.close()


@dataclass
class Step:
    rate: int
    created: int = 0
    successful: int = 0
    failed: int = 0
    achieved: float = 0.0  # successful calls/s in the measured window
    cpu: dict[str, float] = field(default_factory=dict)  # group -> % of one core
    kernel_share: float = 0.0  # of the proxies' CPU, the part in system calls
    retransmissions: int = 0  # by the caller (sipp): a request or response was late
    latency: dict[str, float] = field(default_factory=dict)  # INVITE -> 200, ms: p50 p99 max
    # ng commands the relay handled in the step (offer, answer, delete), and "open": the
    # calls it still held 2 s after the step (each call should have been deleted)
    relay: dict[str, int] = field(default_factory=dict)
    others: float = 0.0  # % of a core used by processes not of the bench: a busy machine
    # user-space instructions in the step by group, "proxy" and "lb" (--instructions)
    instructions: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)  # why calls failed, most first

    @property
    def shed(self) -> int:
        """Calls refused with 503 (the UAC stops them; run_step takes them out of ok)."""
        return self.created - self.successful - self.failed

    def us_per_call(self, group: str) -> float:
        return self.cpu.get(group, 0.0) / 100 / max(self.achieved, 1e-9) * 1e6

    @property
    def passed(self) -> bool:
        return sustained(self.rate, self.created, self.successful, self.achieved)


@dataclass
class Setup:
    target: str  # where the UAC sends: the LB, or the proxy
    groups: dict[str, list[int]]  # process group -> pids (expanded to trees when measured)
    callees: Path
    workdir: Path
    relay: Relay | None = None
    idle_per_s: dict[str, float] = field(default_factory=dict)  # instructions (--instructions)


def counted_pids(setup: Setup) -> list[str]:
    """Every process of the proxies and the LB (its workers too), as callgrind_control
    takes them."""
    return [
        str(pid)
        for name in ("proxy", "lb")
        for parent in setup.groups.get(name, [])
        for pid in process_tree(parent)
    ]


def collect_instructions(setup: Setup, counted: list[str], label: str) -> dict[str, int]:
    """Stop counting, dump, and sum each group's instructions since counting began."""
    callgrind_control("-i", "off", *counted)
    callgrind_control("-d", *counted)
    counts: dict[str, int] = {}
    for number, path in enumerate(sorted(setup.workdir.glob("callgrind.*"))):
        group = path.name.split(".")[1]  # callgrind.<group>.<pid>[.<dump>]
        counts[group] = counts.get(group, 0) + collected(path)
        if os.environ.get("CALL_BENCH_KEEP"):  # for callgrind_annotate
            path.rename(setup.workdir / f"{group}-{label}-{time.time():.0f}-{number}.callgrind")
        else:
            path.unlink()
    return counts


def measure_idle(setup: Setup, seconds: float) -> None:
    """What the roles' timers cost with no calls (pool reloads, probes, the collector):
    at the few calls a second callgrind allows it would be a large part of a call."""
    counted = counted_pids(setup)
    callgrind_control("-z", *counted)
    callgrind_control("-i", "on", *counted)
    started = time.monotonic()
    time.sleep(seconds)
    counts = collect_instructions(setup, counted, "idle")
    elapsed = time.monotonic() - started
    setup.idle_per_s = {group: count / elapsed for group, count in counts.items()}
    described = ", ".join(f"{g} {c / elapsed / 1e3:.0f}k/s" for g, c in sorted(counts.items()))
    print(f"idle instructions (taken off each step): {described}")


def run_step(args: argparse.Namespace, rate: int, setup: Setup) -> Step:
    stats = setup.workdir / f"uac-{rate}.csv"
    stats.unlink(missing_ok=True)
    errors = setup.workdir / f"uac-{rate}-errors.log"
    command = [
        "sipp", setup.target, "-sf", str(SCENARIOS / "proxy_uac_call.xml"),
        "-inf", str(setup.callees), "-i", "127.0.0.1", "-p", str(free_udp_port()),
        "-r", str(rate), "-rp", "1000", "-m", str(rate * args.duration), "-l", str(2 * rate),
        "-timeout", f"{args.duration + 15}s", "-recv_timeout", "5000", "-nostdin",
        "-default_behaviors", "all,-abortunexp", "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-trace_rtt", "-rtt_freq", "100", "-trace_counts",
        "-buff_size", "4194304", "-max_recv_loops", "10000",
        "-trace_err", "-error_file", str(errors),
    ]  # fmt: skip
    relay_before = relay_counts(setup.relay.ng_port) if setup.relay else {}
    counted = counted_pids(setup)
    if args.instructions:
        callgrind_control("-z", *counted)  # what the warm-up and the last step left
        callgrind_control("-i", "on", *counted)
    counting_since = time.monotonic()
    started = time.time()
    uac = subprocess.Popen(
        command, cwd=setup.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    groups = {
        name: [p for pid in pids for p in process_tree(pid)] for name, pids in setup.groups.items()
    }
    groups["sipp"] = [*groups.get("sipp", []), uac.pid]
    ticks, t0 = all_ticks(), time.time()
    cpu = sample_cpu(groups, args.duration)
    mine = {os.getpid(), *(pid for pids in groups.values() for pid in pids)}
    others = others_pct(ticks, all_ticks(), time.time() - t0, mine)
    try:
        uac.wait(timeout=args.duration + 25)
    except subprocess.TimeoutExpired:
        uac.kill()
        uac.wait()
    step = Step(rate, others=others)
    if args.instructions:
        counts = collect_instructions(setup, counted, f"step-{rate}")
        seconds = time.monotonic() - counting_since
        for group, count in counts.items():  # less what the roles do when idle
            step.instructions[group] = count - int(setup.idle_per_s.get(group, 0.0) * seconds)
    if setup.relay is not None:
        time.sleep(2)  # the last BYEs' deletes have reached it
        after = relay_counts(setup.relay.ng_port)
        step.relay = {name: after[name] - relay_before[name] for name in COMMANDS}
        step.relay["open"] = after["open"]
    for name in groups:
        step.cpu[name] = cpu.pct(name)
    proxy_used = cpu.after["proxy"][0] - cpu.before["proxy"][0]
    step.kernel_share = (cpu.after["proxy"][1] - cpu.before["proxy"][1]) / max(proxy_used, 1e-9)
    rows = read_stats(stats)
    if not rows:
        return step
    last = rows[-1]
    completed, refused = completed_calls(setup.workdir, uac.pid)
    step.created = int(last["OutgoingCall(C)"])
    step.successful = int(last["SuccessfulCall(C)"]) - refused  # sipp counts them in
    step.failed = int(last["FailedCall(C)"])
    step.retransmissions = int(last.get("Retransmissions(C)", 0) or 0)
    step.latency = latency_percentiles(setup.workdir, uac.pid)
    step.errors = why_failed(errors)
    achieved = window_rate(completed or rows, started + cpu.warm, started + args.duration - 0.5)
    if achieved is None:  # too few rows in the window: the average since the start
        achieved = step.successful / max(time.time() - started, 1e-9)
    step.achieved = achieved
    return step


def why_failed(path: Path, most: int = 3) -> list[tuple[int, str]]:
    """sipp's reasons for failed calls (its -error_file), each counted. An event there
    starts with a timestamp and may quote a whole message over several lines: its first
    line is the reason; Call-IDs and numbers are taken out (not the status of a message
    that came instead) so that one reason is one line."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    reasons: dict[str, int] = {}
    for event in re.split(r"\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ", text)[1:]:
        reason, _, received = event.split("\n", 1)[0].partition("received '")
        reason = re.sub(r"(?i)(call-id:?|dead call) \S+", r"\1 …", reason)
        reason = re.sub(r"\d+", "N", reason)  # indexes, counts, times
        if received:  # the first line of the message that came instead: kept as it is
            reason += f"received '{received}'"
        reason = reason.strip()[:160]
        reasons[reason] = reasons.get(reason, 0) + 1
    return sorted(((n, reason) for reason, n in reasons.items()), reverse=True)[:most]


def completed_calls(workdir: Path, pid: int) -> tuple[list[dict[str, str]], int]:
    """sipp counts a call that took the scenario's 503 branch (``stop_call``) as
    successful. From its -trace_counts file: rows of the calls really completed (the
    200s to the BYE, under sipp's column name for the rate window), and the 503s."""
    found = list(workdir.glob(f"*_{pid}_counts.csv"))
    rows = read_stats(found[0]) if found else []
    if not rows:
        return [], 0
    bye_ok = [name for name in rows[0] if name.endswith("_200_Recv")][-1]
    refused = sum(int(rows[-1][name]) for name in rows[0] if name.endswith("_503_Recv"))
    completed = [{"CurrentTime": r["CurrentTime"], "SuccessfulCall(C)": r[bye_ok]} for r in rows]
    if not os.environ.get("CALL_BENCH_KEEP"):
        found[0].unlink()
    return completed, refused


def latency_percentiles(workdir: Path, pid: int) -> dict[str, float]:
    """INVITE to 200 of every call, from sipp's -trace_rtt file: p50, p99, max in ms."""
    found = list(workdir.glob(f"*_{pid}_rtt.csv"))
    if not found:
        return {}
    times = []
    for line in found[0].read_text().splitlines()[1:]:
        fields = line.split(";")
        with contextlib.suppress(IndexError, ValueError):
            times.append(float(fields[1]))
    if not os.environ.get("CALL_BENCH_KEEP"):
        found[0].unlink()
    if not times:
        return {}
    times.sort()

    def at(fraction: float) -> float:
        return times[min(len(times) - 1, int(fraction * len(times)))]

    return {"p50": at(0.5), "p99": at(0.99), "max": times[-1]}


def start_role(
    role: str,
    text: str,
    workdir: Path,
    name: str,
    log_level: str = "warning",
    wrapper: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``sipfleet run role`` with the TOML ``text`` (under ``wrapper``, such as valgrind);
    returns once it listens."""
    config_from_dict(tomllib.loads(text))  # fail here, not in the child, on a bad key
    path = workdir / f"{name}.toml"
    path.write_text(text)
    ready = workdir / f"{name}.ready"
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "sipfleet.cli", "run", role, "-c", str(path),
         "--ready-file", str(ready), "--log-level", log_level],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + (300 if wrapper else 30)
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise SystemExit(f"{name} did not start:\n{(workdir / f'{name}.log').read_text()}")
        time.sleep(0.05)
    return process


def counting(args: argparse.Namespace, workdir: Path, group: str) -> list[str]:
    """valgrind's callgrind in front of a role when instructions are counted (switched on
    only during the steps)."""
    if not args.instructions:
        return []
    return [*VALGRIND, f"--callgrind-out-file={workdir}/callgrind.{group}.%p"]


def media_toml(args: argparse.Namespace, relay: Relay | None) -> str:
    """The proxy's [media] and [accounting]: a relay for every call or none at all."""
    text = (
        f'[media]\nmode = "always"\nrelays = ["{relay.config}"]\n'
        if relay is not None
        else '[media]\nmode = "never"\n'
    )
    if args.accounting == "off":
        text += "[accounting]\nenabled = false\n"
    return text


# One source sends all the load through the LB: no per-source rate limit ([edge]).
EDGE_OFF = "[edge]\nrate_per_s = 0\n"


def node_toml(name: str, workdir: Path, dsn: str, workers: int = 1) -> str:
    return (
        f'[node]\nname = "{name}"\ndata_dir = "{workdir}"\ncluster_secret = "bench"\n'
        f"workers = {workers}\n\n"
        f'[database]\nwrite = "{dsn}"\n\n[sip]\ndomains = ["{DOMAIN}"]\n\n'
    )


@contextlib.contextmanager
def cluster(
    args: argparse.Namespace, workdir: Path, dsn: str, relay: Relay | None
) -> Iterator[Setup]:
    """Seed the database, start the proxies (and the LB) and the UAS; stop them after."""
    uas_port = free_udp_port()
    proxy_ports = [free_udp_port() for _ in range(args.proxies)]
    targets = [f"sip:127.0.0.1:{port}" for port in proxy_ports] if args.lb else []
    asyncio.run(seed(dsn, args.users, uas_port, targets))
    callees = workdir / "callees.csv"
    users = "\n".join(f"c{i:05d};{DOMAIN}" for i in range(1, args.users + 1))
    callees.write_text(f"SEQUENTIAL\n{users}\n")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(proxy_ports):
            text = node_toml(f"proxy{i}", workdir, dsn, args.proxy_workers)
            text += f'[proxy]\nlisten = ["udp:127.0.0.1:{port}"]\nauthenticate = false\n'
            if args.privacy_clir == "off":
                text += "privacy_clir = false\n"
            text += media_toml(args, relay)
            # info: the garbage collector's summary when it stops (pauses, full sweeps)
            wrapper = counting(args, workdir, "proxy")
            processes.append(start_role("proxy", text, workdir, f"proxy{i}", "info", wrapper))
        target = f"127.0.0.1:{proxy_ports[0]}"
        groups = {"proxy": [p.pid for p in processes]}
        if relay is not None:
            groups["rtpengine"] = [relay.process.pid]
        if args.lb:
            lb_port = free_udp_port()
            text = node_toml("lb", workdir, dsn, args.lb_workers)
            text += f'[lb]\nlisten = ["udp:127.0.0.1:{lb_port}"]\nkeepalive = false\n'
            text += EDGE_OFF
            processes.append(
                start_role("lb", text, workdir, "lb", "warning", counting(args, workdir, "lb"))
            )
            groups["lb"] = [processes[-1].pid]
            target = f"127.0.0.1:{lb_port}"
            time.sleep(10 if args.instructions else 1.5)  # the LB's first health probes answered
        # The UAS's -m is a safety stop, set at twice the calls: at exactly the calls of
        # the run, it stopped answering the last ~700 INVITEs of a 2,000/s step (they
        # failed at the UAC with a receive timeout, then CANCEL and 487), as if it had
        # counted more calls than it was sent; with room to spare every call completes.
        total_calls = sum(args.rate_list) * args.duration
        uas = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "proxy_uas_answer.xml"), "-i", "127.0.0.1",
             "-p", str(uas_port), "-m", str(2 * total_calls), "-nostdin", "-buff_size", "4194304",
             "-timeout", f"{len(args.rate_list) * (args.duration + 30)}s",
             "-max_recv_loops", "10000"],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(uas)
        groups["sipp"] = [uas.pid]
        yield Setup(target, groups, callees, workdir, relay)
    finally:
        for process in reversed(processes):
            stop(process)


def report_line(step: Step, json_lines: bool) -> str:
    if json_lines:
        return json.dumps(
            {
                **step.__dict__,
                "shed": step.shed,
                "us_per_call": {name: step.us_per_call(name) for name in step.cpu},
                "load": os.getloadavg()[0],
                "pass": step.passed,
            }
        )
    groups = "  ".join(
        f"{name} {step.cpu[name]:5.1f}% {step.us_per_call(name):5.0f}us"
        for name in ("lb", "proxy", "db", "rtpengine", "sipp")
        if name in step.cpu
    )
    if step.relay:  # an offer, an answer and a delete per call, and none left open
        ng = "/".join(str(step.relay[name]) for name in COMMANDS)
        groups += f"  ng offer/answer/delete {ng} open {step.relay['open']}"
    for name, count in sorted(step.instructions.items()):  # per call completed in the step
        groups += f"  {name} {count / max(step.successful, 1) / 1000:.0f}k instructions/call"
    latency = "/".join(f"{step.latency.get(k, 0):.0f}" for k in ("p50", "p99", "max"))
    return (
        f"{step.rate:5d}  {step.created:7d}  {step.successful:6d}  {step.failed:6d}"
        f"  {step.shed:6d}  {step.retransmissions:6d}  {step.achieved:8.1f}  {latency:>12}"
        f"  {groups}  kernel {step.kernel_share:3.0%}"
        f"  others {step.others:3.0f}%  load {os.getloadavg()[0]:4.1f}"
        f"  {'pass' if step.passed else 'FAIL'}"
    ) + "".join(f"\n       failed {n}x: {why}" for n, why in step.errors)


def call_records(path: str) -> str:
    """How many ``acc`` rows a run on SQLite wrote and ended (after the proxies stopped)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows, ended = db.execute("SELECT count(*), count(end_ms) FROM acc").fetchone()
    return f"acc: {rows} call records, {ended} ended"


def describe(args: argparse.Namespace, dsn: str, relay: Relay | None, workdir: Path) -> str:
    """The run's setup in a line: path, accounting, relay, the build the proxy runs."""
    path = f"LB ({args.lb_workers} workers) -> " if args.lb else ""
    proxies = f"{args.proxies} proxy process(es) of {args.proxy_workers} worker(s)"
    media = f"rtpengine ports {PORT_MIN}-{relay.port_max}" if relay else "no media relay"
    log = (workdir / "proxy0.log").read_text()
    core = log.split("SIP core: ", 1)[1].split(")", 1)[0] if "SIP core: " in log else "?"
    return (
        f"{path}{proxies}, {args.users} callees, {dsn[:6]}..., accounting {args.accounting},"
        f" privacy_clir {args.privacy_clir},"
        f" {media}, SIP core: {core}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="600,1200,1800", help="calls/s, comma-separated")
    parser.add_argument("--duration", type=int, default=10, help="seconds per step (<= 60)")
    parser.add_argument("--users", type=int, default=1000, help="callees in the database")
    parser.add_argument("--db", default="", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--mariadb", action="store_true", help="a private MariaDB server")
    parser.add_argument("--lb", action="store_true", help="calls through `sipfleet run lb`")
    parser.add_argument("--lb-workers", type=int, default=1, help="LB worker processes")
    parser.add_argument("--proxies", type=int, default=1, help="proxy processes (the pool)")
    parser.add_argument("--proxy-workers", type=int, default=1, help="workers of each proxy")
    parser.add_argument(
        "--accounting", choices=("on", "off"), default="on", help="call records (default on)"
    )
    parser.add_argument(
        "--privacy-clir",
        choices=("on", "off"),
        default="on",
        help="the caller's privacy preference read per INVITE (default on; the anchor's "
        "proxy.toml has it off: one SELECT less, as Kamailio's proxy does)",
    )
    parser.add_argument(
        "--media-relay", action="store_true", help="a real rtpengine relays every call"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="run the proxies and the LB under callgrind; their user-space instructions per "
        "completed call of each step (the first step warms up; rates of 10-30/s)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per step")
    args = parser.parse_args()
    args.duration = max(4, min(args.duration, 60))
    args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()][:10]
    args.proxies = max(1, min(args.proxies, 4))
    args.proxy_workers = max(1, min(args.proxy_workers, 4))
    workdir = Path(tempfile.mkdtemp(prefix="sipfleet-call-bench-"))
    server = None
    if args.mariadb:
        from tests.dbservers import start_mariadb

        server = start_mariadb()
        args.db = server.create_database("callbench")
    dsn = args.db or f"sqlite:///{workdir / 'sipfleet.db'}"
    try:
        with contextlib.ExitStack() as stack:
            relay = None
            if args.media_relay:
                relay = stack.enter_context(running_rtpengine(workdir, max(args.rate_list)))
            setup = stack.enter_context(cluster(args, workdir, dsn, relay))
            if server is not None and server.process is not None:
                setup.groups["db"] = [server.process.pid]
            print(describe(args, dsn, relay, workdir))
            print(
                " rate  created      ok  failed     503  retrans  ok/s  INVITE-200 ms"
                " p50/p99/max  CPU % of one core, us/call"
            )
            if args.instructions:
                measure_idle(setup, args.duration)
            for rate in args.rate_list:
                print(report_line(run_step(args, rate, setup), args.json), flush=True)
                time.sleep(2)
        for log in sorted(workdir.glob("proxy*.log")):  # written when the proxies stopped
            for line in log.read_text().splitlines():
                for topic in ("garbage collector:", "location lookups:"):
                    if topic in line:
                        print(f"{log.stem}: {topic} {line.split(topic, 1)[1].strip()}")
        if dsn.startswith("sqlite:///"):  # a check that accounting was on or off
            print(call_records(dsn.removeprefix("sqlite:///")))
    finally:
        if server is not None:
            server.destroy()
        if os.environ.get("CALL_BENCH_KEEP"):
            print("kept", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
