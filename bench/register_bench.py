"""REGISTER refreshes per second through sipfleet's registrar, and Kamailio's, same run.

    .venv/bin/python bench/register_bench.py                       # everything below
    .venv/bin/python bench/register_bench.py --backends mariadb --auth no --no-kamailio
    .venv/bin/python bench/register_bench.py --backends mariadb --auth no --no-kamailio \
        --steps 4000,6000                                          # fixed steps, no ramp
    .venv/bin/python bench/register_bench.py --backends mariadb --auth no --no-kamailio \
        --overload                                                 # + 2x the maximum
    .venv/bin/python bench/register_bench.py --backends mariadb --auth yes --no-kamailio \
        --lb --overload                                            # through the LB
    .venv/bin/python bench/register_bench.py --memory 100000 --backends mariadb --no-kamailio

For each backend (SQLite file, a private MariaDB configured like the anchor's: 256 MB
buffer pool, durable commits; a private PostgreSQL with its durable defaults), and each
of "no auth" / "auth": start ``sipfleet run registrar``, register ``--users`` users once
(not measured), then ramp sipp (bench/sipp/reg_uac.xml, or reg_auth_uac.xml: REGISTER,
401, REGISTER with the user's own digest credentials from the CSV, 200) over the users:
every measured REGISTER is a refresh. A step runs ``--duration`` seconds at a fixed rate
(``-m rate*duration``, ``-timeout``); it passes when failed + unfinished calls are < 1 %
and the success rate in the window is >= 97 % of the target. The rate goes up by
``--factor`` while steps pass, then bisects twice (relay_bench's method, the anchor's).

CPU per REGISTER of the registrar (its process tree) and of the database server (mariadbd;
postgres and its backends; SQLite runs inside the registrar) comes from /proc/<pid>/stat
over the measurement window; it is disturbed less than the rate by other load on the
machine, whose share is printed as "others" (a step where others used more than
``--max-others`` % of a core is re-run once and flagged).

Kamailio (``--kamailio``, default on): the anchor's runner, bench-anchor/run.sh in the
shared folder next to the repository (../shared) k1_reg_direct k1_reg_direct_c16, in the
same run, on its own MariaDB started with the same options (usrloc db_mode=3, no auth; it
needs a Python with uvloop, asyncmy, aiomysql: ``--anchor-python``).

``--overload``: after a ramp, one step at ``--overload-factor`` x the best rate: the
goodput (200s per second) and what was shed (503s), then one step at the best rate to
show it recovered (with ``--steps``, also when no given step passed: twice the highest,
the summary saying it was not sustained). ``--confirm N``: before it, the ramp's best
rate is run again until a rate passes twice (a failure leaves the next lower one that
passed; N steps at most): the maximum is a rate that held each time it was run.
``--lb``: sipp talks to ``sipfleet run lb`` (``--lb-workers``), whose registrar pool is
the registrar, as phones of a cluster do (REGISTER hashed by Call-ID, Path added, the
registrar trusting the LB). With authentication, each step also counts the registrar's
"nonce-count replayed" log lines: a copy of a served REGISTER worked on again instead of
answered from what was sent (a false 401). Every step prints what each role refused in
it, from its /metrics: 503s by reason (the LB's ``lb_backlog`` and ``registrar_asked``,
RFC 7339; the registrar's ``overload``) and datagrams dropped past the answer budget.
``--memory N``: RSS of the registrar with the table at steady state before and after N
more AORs were registered through it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests.dbservers import DbServer, start_mariadb, start_postgres  # noqa: E402

from bench.common import (  # noqa: E402 - after the path is set
    HZ,
    SHARED,
    SIPP_COMMON,
    Ticks,
    all_ticks,
    free_udp_port,
    measured,
    nice,
    ramp_rates,
    read_stats,
    score,
    stop,
    tree_pids,
    tree_ticks,
    udp_drops,
    wait_for_quiet,
    wait_idle,
)
from sipfleet.config import config_from_dict  # noqa: E402
from sipfleet.config.dump import write_config  # noqa: E402
from sipfleet.sip.digest import compute_ha1  # noqa: E402
from sipfleet.storage import Subscriber, open_storage  # noqa: E402
from sipfleet.storage.dsn import Dsn  # noqa: E402
from sipfleet.storage.migrate import upgrade  # noqa: E402

ANCHOR = SHARED / "bench-anchor"
# The anchor's mariadbd options (lib/common.sh); everything else at MariaDB's defaults,
# durable: innodb_flush_log_at_trx_commit = 1.
ANCHOR_MARIADB = {"innodb-buffer-pool-size": "256M", "max-connections": "500"}
PASSWORD = "bench-secret"
DOMAIN = "127.0.0.1"  # the anchor's REGISTERs: To <sip:rNNNNN@127.0.0.1>


@dataclass
class Step:
    name: str
    rate: int
    passed: bool = False
    created: int = 0
    successful: int = 0
    fail_pct: float = 100.0
    achieved: float = 0.0
    retransmissions: int = 0
    unexpected: int = 0  # answers other than the expected (503 when shedding)
    replays: int = 0  # "nonce-count replayed" lines the registrar logged in the step
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    others_pct: float = 0.0
    contaminated: bool = False
    drops: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # "role 503|dropped reason": n
    load_avg: float = 0.0
    busiest_others: str = ""  # who the others were

    def us_per_register(self, group: str) -> float:
        return 1e6 * self.cpu.get(group, 0.0) / 100.0 / max(self.achieved, 1.0)


@dataclass
class Target:
    """What a step drives: the SIP address, the scenario, the users, the CPU groups."""

    name: str
    port: int
    scenario: str
    users_csv: Path
    groups: dict[str, int]  # name: pid of a process tree
    workdir: Path
    uac_port: int
    registrar_port: int = 0  # when ``port`` is an LB's: the registrar behind it

    @property
    def ports(self) -> dict[str, int]:
        """The UDP ports whose drops are counted."""
        if self.registrar_port:
            return {"lb": self.port, "registrar": self.registrar_port}
        return {"registrar": self.port}

    @property
    def management(self) -> dict[str, str]:
        """Each role's management API (its ready file), by name."""
        urls = {}
        for name in ("lb", "registrar") if self.registrar_port else ("registrar",):
            with contextlib.suppress(OSError, ValueError, KeyError):
                ready = json.loads((self.workdir / f"{name}.ready").read_text())
                urls[name] = str(ready["mgmt"])
        return urls

    @property
    def replays(self) -> int:
        """Copies of served REGISTERs refused as replays so far (the registrar's log)."""
        log = self.workdir / "registrar.log"
        with contextlib.suppress(OSError), log.open("rb") as lines:
            return sum(b"nonce-count replayed" in line for line in lines)
        return 0


# -- CPU of the processes not ours --------------------------------------------------------------
def others(before: Ticks, after: Ticks, seconds: float, mine: set[int]) -> tuple[float, str]:
    """% of one core used by processes not in ``mine``, and the three busiest of them."""
    # A process that started during the window (a test run, a compiler) counts whole.
    used = [
        (ticks - before[key][1] if key in before else ticks, key[0], name)
        for key, (name, ticks) in after.items()
        if key[0] not in mine
    ]
    used.sort(reverse=True)
    total = round(100.0 * sum(u[0] for u in used) / HZ / seconds, 1)
    top = ", ".join(
        f"{name}[{pid}] {100.0 * t / HZ / seconds:.0f}%" for t, pid, name in used[:3] if t
    )
    return total, top


def others_pct(before: Ticks, after: Ticks, seconds: float, mine: set[int]) -> float:
    """Unlike common.others_pct, a process that started meanwhile counts (whole)."""
    return others(before, after, seconds, mine)[0]


# -- databases -----------------------------------------------------------------------------
@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[tuple[str, int | None]]:
    """A migrated empty database and the PID whose tree is its server (None: in-process)."""
    server: DbServer | None = None
    if kind == "sqlite":
        dsn = f"sqlite://{workdir / 'registrar.db'}"
    elif kind == "mariadb":
        server = start_mariadb(ANCHOR_MARIADB)
        dsn = server.create_database("bench")
    elif kind == "postgres":
        server = start_postgres()
        dsn = server.create_database("bench")
    else:
        raise SystemExit(f"unknown backend {kind!r}")
    try:
        asyncio.run(upgrade(Dsn.parse(dsn)))
        yield dsn, server.process.pid if server and server.process else None
    finally:
        if server is not None:
            server.destroy()


def add_subscribers(dsn: str, users: list[str]) -> None:
    async def run() -> None:
        storage = open_storage(dsn, pool_size=8)
        gate = asyncio.Semaphore(8)

        async def add(user: str) -> None:
            async with gate:
                ha1 = compute_ha1(user, DOMAIN, PASSWORD, "MD5")
                sha = compute_ha1(user, DOMAIN, PASSWORD, "SHA-256")
                with contextlib.suppress(Exception):  # already there from an earlier phase
                    await storage.subscribers.add(Subscriber(user, DOMAIN, ha1, sha))

        try:
            await asyncio.gather(*(add(user) for user in users))
        finally:
            await storage.close()

    asyncio.run(run())


def write_users(path: Path, prefix: str, count: int) -> list[str]:
    users = [f"{prefix}{i:05d}" for i in range(1, count + 1)]
    lines = ["SEQUENTIAL"]
    lines += [f"{u};[authentication username={u} password={PASSWORD}]" for u in users]
    path.write_text("\n".join(lines) + "\n")
    return users


# -- the registrar and the LB -------------------------------------------------------------------
def node_config(args: argparse.Namespace, dsn: str, name: str, workdir: Path) -> dict[str, Any]:
    return {
        "node": {
            "name": name,
            "data_dir": str(workdir),
            "cluster_secret": "bench-cluster-secret",
            "workers": args.workers,
        },
        "database": {
            "write": dsn,
            "pool_size": args.pool_size,
            "max_in_flight": args.max_in_flight,
        },
        "sip": {"auth_algorithms": ["MD5"]},  # sipp answers MD5 challenges
    }


@contextlib.contextmanager
def role(
    name: str, config: dict[str, Any], workdir: Path, log_level: str = "warning"
) -> Iterator[subprocess.Popen[bytes]]:
    """``sipfleet run NAME`` with ``config``, its log in workdir/NAME.log; once ready."""
    config_path = workdir / f"{name}.toml"
    write_config(config_from_dict(config), config_path)
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    log = (workdir / f"{name}.log").open("ab")
    command = [sys.executable, "-m", "sipfleet.cli", "run", name, "-c", str(config_path)]
    command += ["--ready-file", str(ready), "--log-level", log_level]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start, see {workdir / f'{name}.log'}")
            time.sleep(0.05)
        yield proc
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def registrar(
    args: argparse.Namespace, dsn: str, authenticate: bool, workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_udp_port()
    config = node_config(args, dsn, "bench-registrar", workdir)
    config["registrar"] = {
        "listen": [f"udp:127.0.0.1:{port}"],
        "authenticate": authenticate,
        "max_expires": 3600,
        "trusted_lbs": ["127.0.0.1"] if args.lb else [],  # the LB's Path is stored
    }
    # INFO: the "authentication failed: nonce-count replayed" lines are counted.
    with role("registrar", config, workdir, "info" if authenticate else "warning") as proc:
        yield proc, port


@contextlib.contextmanager
def lb(
    args: argparse.Namespace, dsn: str, registrar_port: int, workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``sipfleet run lb`` with the registrar as its registrar pool, and its port."""

    async def pool() -> None:
        storage = open_storage(dsn)
        try:
            for target in await storage.lb_targets.list_all("registrar"):
                await storage.lb_targets.remove("registrar", target.uri)
            await storage.lb_targets.add("registrar", f"sip:127.0.0.1:{registrar_port}")
        finally:
            await storage.close()

    asyncio.run(pool())
    port = free_udp_port()
    config = node_config(args, dsn, "bench-lb", workdir)
    config["node"]["workers"] = args.lb_workers
    config["lb"] = {"listen": [f"udp:127.0.0.1:{port}"], "keepalive": False}
    # One sipp address sends every phone's REGISTERs: the edge's per-source limit (made
    # for one phone or one scanner) would refuse nearly all of them.
    config["edge"] = {"rate_per_s": 0}
    with role("lb", config, workdir) as proc:
        time.sleep(1.5)  # the LB's first health checks of the pool have been answered
        yield proc, port


# -- sipp steps ------------------------------------------------------------------------------
def sipp_command(target: Target, rate: int, calls: int, duration: int, stat: Path) -> list[str]:
    return [
        "sipp",
        f"127.0.0.1:{target.port}",
        "-sf",
        str(BENCH / "sipp" / target.scenario),
        "-inf",
        str(target.users_csv),
        *SIPP_COMMON,
        # sipp sends a BYE for every call it aborts (a 503, a timeout): a phone refused a
        # registration sends none, and those BYEs were half of what a refusal cost the
        # LB and sipp at twice the maximum (each answered 503, parsed, for want of a proxy)
        *("-default_behaviors", "all,-bye"),
        *("-p", str(target.uac_port), "-cp", str(free_udp_port())),
        *("-mp", str(free_udp_port() & ~1)),
        *("-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(max(200, 2 * rate))),
        *("-timeout", f"{duration + 15}s", "-recv_timeout", "5000"),
        *("-trace_stat", "-fd", "1", "-stf", str(stat)),
    ]


def run_step(args: argparse.Namespace, target: Target, rate: int, duration: int) -> Step:
    stat = target.workdir / f"{target.name}-{rate}-stat.csv"
    stat.unlink(missing_ok=True)
    calls = rate * duration
    ports = {**target.ports, "uac": target.uac_port}
    replays = target.replays
    dropped_before = udp_drops(ports)
    refused_before = refusals(target.management)
    command = sipp_command(target, rate, calls, duration, stat)
    out = (target.workdir / f"{target.name}-{rate}-sipp.log").open("wb")
    begin = time.time()
    uac = subprocess.Popen(
        command, cwd=target.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        warm = min(3.0, duration / 4)
        time.sleep(warm)
        pids = {**target.groups, "uac": uac.pid}
        mine = {os.getpid(), *(p for pid in pids.values() for p in tree_pids(pid))}
        before = {name: tree_ticks(pid) for name, pid in pids.items()}
        everyone, t0 = all_ticks(), time.time()
        time.sleep(max(1.0, duration - 1 - warm))
        after = {name: tree_ticks(pid) for name, pid in pids.items()}
        seconds = time.time() - t0
        others_used, busiest = others(everyone, all_ticks(), seconds, mine)
        dropped = udp_drops(ports)
        try:
            uac.wait(timeout=duration + 25)
        except subprocess.TimeoutExpired:
            uac.kill()
            uac.wait()
    finally:
        if uac.poll() is None:
            uac.kill()
            uac.wait()
        out.close()
    cpu = {n: round(100.0 * (after[n] - before[n]) / HZ / seconds, 1) for n in pids}
    drops = {name: dropped[name] - dropped_before[name] for name in ports}
    step = Step(target.name, rate, cpu=cpu, others_pct=others_used, drops=drops)
    step.replays = target.replays - replays
    refused_after = refusals(target.management)
    step.refused = {
        key: count - refused_before.get(key, 0)
        for key, count in refused_after.items()
        if count - refused_before.get(key, 0)
    }
    step.load_avg = round(os.getloadavg()[0], 2)
    step.busiest_others = busiest
    rows = read_stats(stat)
    if not rows:
        return step
    step.unexpected = int(rows[-1].get("FailedUnexpectedMessage(C)", "0") or 0)
    score(step, rows, (begin + warm, begin + duration - 0.5), calls, since=begin)
    return step


REFUSAL_METRICS = {
    "sipfleet_overload_rejected_total": "503",
    "sipfleet_datagrams_dropped_total": "dropped",
}


def refusals(management: dict[str, str]) -> dict[str, int]:
    """Each role's overload counters from its /metrics: ``"lb 503 registrar_asked": n``
    (new requests refused, by reason) and ``"registrar dropped overload": n``."""
    counts: dict[str, int] = {}
    for name, url in management.items():
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                text = response.read().decode()
        except (OSError, ValueError):  # no API (its URL None), or gone
            continue
        for line in text.splitlines():
            metric, _, rest = line.partition("{")
            if metric not in REFUSAL_METRICS or 'reason="' not in rest:
                continue
            reason = rest.split('reason="', 1)[1].split('"', 1)[0]
            key = f"{name} {REFUSAL_METRICS[metric]} {reason}"
            counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def idle(pids: list[int], max_wait: float = 60.0) -> None:
    """Until the servers under test are idle (a backlog of a failed step drained)."""
    wait_idle(lambda: sum(tree_ticks(p) for p in pids), max_wait)


def quiet(args: argparse.Namespace, mine: set[int]) -> None:
    """Let other work on the machine settle (bounded) before a step; new processes count."""
    wait_for_quiet(args, mine, others_pct)


def measured_step(
    args: argparse.Namespace, target: Target, rate: int, duration: int | None = None
) -> Step:
    pids = list(target.groups.values())
    mine = {os.getpid(), *(p for pid in pids for p in tree_pids(pid))}

    def settle() -> None:
        idle(pids)
        quiet(args, mine)

    def run() -> Step:
        return run_step(args, target, rate, duration or args.duration)

    return measured(args, settle, run, report)


def report(step: Step) -> None:
    cpu = "  ".join(f"{k} {v:5.1f}%" for k, v in step.cpu.items())
    per = "  ".join(f"{k} {step.us_per_register(k):4.0f}us" for k in step.cpu if k not in ("uac",))
    drops = ",".join(f"{k}:{v}" for k, v in step.drops.items() if v) or "-"
    refused = ", ".join(f"{k} {v}" for k, v in step.refused.items()) or "-"
    print(
        f"[{step.name}] rate {step.rate:6} pass={step.passed!s:5} achieved {step.achieved:8.1f}"
        f"  fail {step.fail_pct:6.2f}%  unexpected {step.unexpected:6}  replays {step.replays:5}"
        f"  retrans "
        f"{step.retransmissions:6}  cpu {cpu}  per REGISTER {per}  others "
        f"{step.others_pct:5.1f}%  load {step.load_avg:.2f}  drops {drops}  refused {refused}"
        f"{f'  CONTAMINATED by {step.busiest_others}' if step.contaminated else ''}",
        file=sys.stderr,
        flush=True,
    )


def ramp(args: argparse.Namespace, target: Target) -> list[Step]:
    if args.steps:
        return [measured_step(args, target, int(r)) for r in args.steps.split(",")]
    return ramp_rates(args, lambda rate: measured_step(args, target, rate))


def warm_up(args: argparse.Namespace, target: Target, users: int) -> None:
    """Register every user once (not measured), so measured REGISTERs are refreshes."""
    rate = min(args.warm_rate, users)
    step = run_step(args, target, rate, max(1, -(-users // rate)))
    print(
        f"[{target.name}] warm-up: {step.successful} of {step.created} registered",
        file=sys.stderr,
        flush=True,
    )


def sustained(steps: list[Step]) -> Step | None:
    """The highest rate that passed every time it was run (its last run), or None."""
    failed = {s.rate for s in steps if not s.passed}
    passed = [(s.rate, at, s) for at, s in enumerate(steps) if s.passed and s.rate not in failed]
    return max(passed)[2] if passed else None  # of a rate run twice, the later run


def confirm(args: argparse.Namespace, target: Target, steps: list[Step]) -> None:
    """``--confirm N``: run the best rate again until one passes twice, each failure
    leaving the next lower rate that passed; N steps at most. A rate that fails when
    run again right after is not one the registrar sustains."""
    for _ in range(args.confirm):
        best = sustained(steps)
        if best is None or sum(s.rate == best.rate for s in steps) >= 2:
            return
        steps.append(measured_step(args, target, best.rate))


def overload_base(args: argparse.Namespace, steps: list[Step]) -> Step | None:
    """The rate the overload step doubles: the best one that passed each time it was
    run (``sustained``); with ``--steps`` and none passed, the highest given (this run
    did not sustain it: the summary says so, with what it achieved, and measures the
    goodput against it), so that every run of a fixed comparison gives its figure."""
    best = sustained(steps)
    if best is not None:
        return best
    if args.steps and steps:
        return max(steps, key=lambda s: s.rate)
    return None


def overload(args: argparse.Namespace, target: Target, best: Step) -> list[Step]:
    """Goodput at ``overload_factor`` x the best rate, then the best rate again."""
    heavy = measured_step(args, target, nice(best.rate * args.overload_factor))
    heavy.name += "-overload"
    after = measured_step(args, target, best.rate)
    after.name += "-after"
    return [heavy, after]


# -- Kamailio through the anchor's runner ---------------------------------------------------
def kamailio(args: argparse.Namespace, workdir: Path) -> list[dict[str, object]]:
    run = workdir / "anchor"
    env = {
        **os.environ,
        "RUN": str(run),
        "PY": args.anchor_python,
        "DURATION": str(args.duration),
        "MAX_STEPS": str(args.max_steps),
        "RUN_ID": "register-bench",
        "NUSERS": str(args.users),
    }
    tests = ["k1_reg_direct", "k1_reg_direct_c16"]
    if not (ANCHOR / "run.sh").exists():  # a user's clone has no ../shared: sipfleet only
        print(f"[kamailio] skipped: no {ANCHOR / 'run.sh'}", file=sys.stderr, flush=True)
        return []
    print(f"[kamailio] {ANCHOR / 'run.sh'} {' '.join(tests)}", file=sys.stderr, flush=True)
    subprocess.run(
        [str(ANCHOR / "run.sh"), *tests],
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=args.max_steps * 2 * (args.duration + 150) + 600,
    )
    results = run / "results" / "results-register-bench.jsonl"
    if not results.exists():
        return []
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("summary")]


def kamailio_rows(summaries: list[dict[str, object]]) -> list[str]:
    rows = []
    for summary in summaries:
        best = summary.get("best")
        if not isinstance(best, dict):
            rows.append(f"{summary['name']:30} {'none':>8}")
            continue
        cpu = best["cpu_pct_of_one_core"]
        rate = max(float(best["achieved_rate"]), 1.0)
        reg = 1e6 * cpu.get("kam_reg", 0) / 100 / rate
        db = 1e6 * cpu.get("mariadb", 0) / 100 / rate
        rows.append(
            f"{summary['name']:30} {best['rate']:8} {reg:9.0f} {db:6.0f}"
            f" {cpu.get('sipp_uac', 0):7.1f} {cpu.get('_others', 0):7.1f}"
            f" {'-':>6} {summary.get('first_fail_rate') or '-':>10}"
        )
    return rows


# -- memory -----------------------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    total = 0
    for each in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def memory(args: argparse.Namespace, kind: str, workdir: Path) -> list[str]:
    """RSS at steady state with the warm-up users, then after ``args.memory`` more AORs."""
    rate = args.memory_rate
    with (
        database(kind, workdir) as (dsn, db_pid),
        registrar(args, dsn, False, workdir) as (
            proc,
            port,
        ),
    ):
        groups = {"registrar": proc.pid, **({"db": db_pid} if db_pid else {})}
        warm = workdir / "memory-warm.csv"
        write_users(warm, "w", 2000)
        target = Target(
            f"{kind}-memory", port, "reg_uac.xml", warm, groups, workdir, free_udp_port()
        )
        run_step(args, target, rate, 10)  # the answer cache at its size for this rate
        before = rss_kb(proc.pid)
        many = workdir / "memory-many.csv"
        write_users(many, "m", args.memory)
        target.users_csv = many
        step = run_step(args, target, rate, -(-args.memory // rate))
        after = rss_kb(proc.pid)
        run_step(
            args,
            Target(target.name, port, "reg_uac.xml", warm, groups, workdir, target.uac_port),
            rate,
            10,
        )
        later = rss_kb(proc.pid)
    return [
        f"memory ({kind}, {rate}/s): RSS {before / 1024:.1f} MB with 2,000 AORs at steady "
        f"state; {after / 1024:.1f} MB after {step.successful:,} more AORs registered through "
        f"it ({(after - before) / 1024:+.1f} MB); {later / 1024:.1f} MB after 10 s more of "
        f"the first users ({(later - before) / 1024:+.1f} MB)"
    ]


# -- main ---------------------------------------------------------------------------------------
def summary_rows(results: dict[str, list[Step]]) -> list[str]:
    rows = []
    for name, steps in results.items():
        ramped = [s for s in steps if not s.name.endswith(("-overload", "-after"))]
        top = sustained(ramped)
        failed = [s.rate for s in ramped if not s.passed and (top is None or s.rate > top.rate)]
        extras = [s for s in steps if s.name.endswith(("-overload", "-after"))]
        if top is None:
            rows.append(f"{name:30} {'none':>8}")
            if not extras or not ramped:
                continue
            top = max(ramped, key=lambda s: s.rate)  # the fixed step, overloaded anyway
            rows.append(
                f"  {top.rate}/s not sustained (achieved {top.achieved:.0f}/s, "
                f"{top.fail_pct:.1f}% failed): the goodput below is measured against it"
            )
        else:
            rows.append(
                f"{name:30} {top.rate:8} {top.us_per_register('registrar'):9.0f}"
                f" {top.us_per_register('db'):6.0f} {top.cpu.get('uac', 0):7.1f}"
                f" {top.others_pct:7.1f} {top.load_avg:6.2f} {min(failed, default='-'):>10}"
            )
        for extra in extras:
            rows.append(
                f"  {extra.name:28} offered {extra.rate}/s: goodput {extra.achieved:.0f}/s "
                f"({100 * extra.achieved / top.rate:.0f} % of {top.rate}/s), "
                f"{extra.unexpected} unexpected (503), {extra.replays} nonce-count replayed, "
                f"{extra.retransmissions} retransmissions, fail {extra.fail_pct:.1f}%"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="mariadb,sqlite,postgres")
    parser.add_argument("--auth", default="no,yes", help="no: no authentication; yes: digest")
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--duration", type=int, default=15, help="seconds per step")
    parser.add_argument("--start", type=int, default=3000, help="first rate of a ramp")
    parser.add_argument("--steps", default="", help="comma list of fixed rates instead of a ramp")
    parser.add_argument("--factor", type=float, default=1.2)
    parser.add_argument("--bisect", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--warm-rate", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="registrar node.workers")
    parser.add_argument("--pool-size", type=int, default=8, help="database.pool_size")
    parser.add_argument("--max-in-flight", type=int, default=256, help="database.max_in_flight")
    parser.add_argument("--kamailio", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--anchor-python", default="/tmp/regbench-venv/bin/python")
    parser.add_argument("--overload", action="store_true")
    parser.add_argument("--lb", action="store_true", help="through `sipfleet run lb`")
    parser.add_argument("--lb-workers", type=int, default=1, help="the LB's node.workers")
    parser.add_argument("--overload-factor", type=float, default=2.0)
    parser.add_argument(
        "--confirm",
        type=int,
        default=0,
        help="steps at most to run the best rate again until one passes twice",
    )
    parser.add_argument("--memory", type=int, default=0, help="AORs for the RSS measurement")
    parser.add_argument("--memory-rate", type=int, default=2000)
    parser.add_argument("--max-others", type=float, default=15.0)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="write every step here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed: apt-get install -y sip-tester")

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="register-bench-"))
    results: dict[str, list[Step]] = {}
    notes: list[str] = []
    kam: list[dict[str, object]] = []
    try:
        if args.memory:
            notes += memory(args, args.backends.split(",")[0], workdir)
            print("\n".join(notes))
            return
        for kind in args.backends.split(","):
            results.update(backend_runs(args, kind, workdir))
            if kind == "mariadb" and args.kamailio and not kam:
                kam = kamailio(args, workdir)
        if args.kamailio and not kam and "mariadb" not in args.backends:
            kam = kamailio(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    header = (
        f"{'registrar':30} {'max/s':>8} {'reg us':>9} {'db us':>6} {'uac %':>7} "
        f"{'others%':>7} {'load':>6} {'first fail':>10}"
    )
    print(
        f"\nload average before: {' '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(header)
    print("\n".join(summary_rows(results) + kamailio_rows(kam)))
    if args.json:
        dump = {
            "sipfleet": {k: [asdict(s) for s in v] for k, v in results.items()},
            "kamailio": kam,
        }
        args.json.write_text(json.dumps(dump, indent=1))


def backend_runs(args: argparse.Namespace, kind: str, workdir: Path) -> dict[str, list[Step]]:
    results: dict[str, list[Step]] = {}
    base = workdir / kind
    base.mkdir()
    users_csv = base / "users.csv"
    users = write_users(users_csv, "r", args.users)
    uac_port = free_udp_port()  # one Contact per user for the whole run: refreshes
    with database(kind, base) as (dsn, db_pid):
        for auth in args.auth.split(","):
            authenticate = auth == "yes"
            if authenticate:
                add_subscribers(dsn, users)
            with contextlib.ExitStack() as running:
                proc, port = running.enter_context(registrar(args, dsn, authenticate, base))
                groups = {"registrar": proc.pid, **({"db": db_pid} if db_pid else {})}
                scenario = "reg_auth_uac.xml" if authenticate else "reg_uac.xml"
                name = f"sipfleet-{kind}-{'auth' if authenticate else 'noauth'}"
                target = Target(name, port, scenario, users_csv, groups, base, uac_port)
                if args.lb:
                    balancer, target.port = running.enter_context(lb(args, dsn, port, base))
                    target.registrar_port, target.name = port, f"{name}-lb"
                    groups["lb"] = balancer.pid
                warm_up(args, target, args.users)
                steps = ramp(args, target)
                confirm(args, target, steps)
                base_step = overload_base(args, steps)
                if args.overload and base_step is not None:
                    steps += overload(args, target, base_step)
                results[target.name] = steps
    return results


if __name__ == "__main__":
    main()
