"""Capacity model of a sipfleet cluster: what one node of each kind carries, and how many
of each a number of subscribers takes (docs/capacity.md).

Run from the repository root:

    .venv/bin/python bench/capacity_model.py measure --rates 200,400,600 --duration 10
    .venv/bin/python bench/capacity_model.py measure --no-auth --rates 300,500
    .venv/bin/python bench/capacity_model.py measure-db --concurrency 8,32,64
    .venv/bin/python bench/capacity_model.py table [--reregister 3600] [--bhca 1] ...

``measure`` fills the gap the other benches leave: REGISTER end to end. sipp phones
register through ``sipfleet run lb`` (one worker, keepalives off) to ``sipfleet run
registrar`` (digest authentication on, unless --no-auth), which writes to a private
MariaDB primary that a private replica follows (tests/dbservers.py; durable: the InnoDB
log is fsynced at every commit). With authentication each phone is one sipp (``-s USER``:
sipp takes digest credentials per process) re-registering its binding with a new Call-ID
and challenged every time, so each phone's row is written rate/phones times a second (row
locks serialise those: keep that low); without, the phones take turns over --users users.
For each rate it prints REGISTERs/s achieved and CPU µs per REGISTER of the LB, the
registrar, the primary (SQL, binary log, feeding the replica) and the replica (applying
the row events), from the scheduler's exact runtime over a steady window (the method of
bench/call_bench.py). Bounded: rate x duration REGISTERs per step, sipp -timeout.

``measure-db`` is the primary's write rate with a replica following: REGISTER saves as the
registrar makes them (bench/storage_bench.py's), straight from this process, at each
concurrency; saves/s, CPU per save of primary and replica, the replica's lag.

``table`` computes the model from the per-operation costs in ``COSTS`` (each measured
here, naming its command) and prints, for a re-registration interval and a call rate,
the subscribers one node of each kind carries, the first bottleneck, and the nodes of
each kind for 100,000 up to 10 million subscribers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.call_bench import EDGE_OFF, node_toml, start_role  # noqa: E402
from bench.common import (  # noqa: E402
    free_udp_port,
    process_tree,
    read_stats,
    sample_cpu,
    stat_fields,
    stop,
    sustained,
    window_rate,
)

DOMAIN = "127.0.0.1"  # node_toml's [sip] domains
PASSWORD = "secret"


# -- measure ---------------------------------------------------------------------------------
def register_scenario(auth: bool) -> str:
    """With auth, the user is sipp's -s (credentials are per process); without, each call
    takes the next user of the phone's CSV file."""
    who = "[service]" if auth else "[field0]"
    head = (
        f"REGISTER sip:{DOMAIN} SIP/2.0\n"
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
        "Max-Forwards: 70\n"
        f"From: <sip:{who}@{DOMAIN}>;tag=[pid]r[call_number]\n"
        f"To: <sip:{who}@{DOMAIN}>\n"
        "Call-ID: [call_id]\n"
    )
    tail = f"Contact: <sip:{who}@[local_ip]:[local_port]>\nExpires: 3600\n"
    first = f"{head}CSeq: 1 REGISTER\n{tail}Content-Length: 0\n"
    steps = [f'  <send retrans="500"><![CDATA[\n{first}\n]]></send>']
    if auth:
        second = f"{head}CSeq: 2 REGISTER\n{tail}[authentication]\nContent-Length: 0\n"
        steps += [
            '  <recv response="401" auth="true"/>',
            f'  <send retrans="500"><![CDATA[\n{second}\n]]></send>',
        ]
    steps.append('  <recv response="200"/>')
    head = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="register">'
    return "\n".join([head, *steps, "</scenario>\n"])


@dataclass
class Step:
    rate: int
    created: int = 0
    successful: int = 0
    failed: int = 0
    achieved: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # group -> % of one core

    def us_per_register(self, group: str) -> float:
        return self.cpu.get(group, 0.0) / 100 / max(self.achieved, 1e-9) * 1e6

    @property
    def passed(self) -> bool:
        return sustained(self.rate, self.created, self.successful, self.achieved)


@dataclass
class Setup:
    lb_port: int
    scenario: Path
    workdir: Path
    groups: dict[str, list[int]]
    phones: int


def run_step(args: argparse.Namespace, rate: int, setup: Setup) -> Step:
    per_phone = max(1, rate // setup.phones)
    count = per_phone * args.duration
    phones = []
    for i in range(setup.phones):
        stats = setup.workdir / f"phone{i}-{rate}.csv"
        stats.unlink(missing_ok=True)
        users = setup.workdir / f"phone{i}-users.csv"
        names = "\n".join(f"u{n:05d}" for n in range(i, args.users, setup.phones))
        users.write_text(f"SEQUENTIAL\n{names}\n")
        command = [
            "sipp", f"127.0.0.1:{setup.lb_port}", "-sf", str(setup.scenario),
            "-i", "127.0.0.1", "-p", str(free_udp_port()), "-s", f"u{i:05d}", "-ap", PASSWORD,
            "-inf", str(users),
            "-r", str(per_phone), "-rp", "1000", "-m", str(count), "-l", str(4 * per_phone),
            "-timeout", f"{args.duration + 15}s", "-nostdin", "-recv_timeout", "5000",
            "-default_behaviors", "all,-abortunexp", "-trace_stat", "-stf", str(stats),
            "-fd", "1", "-trace_err", "-error_file", str(stats.with_suffix(".err")),
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=setup.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        phones.append((process, stats))
    started = time.time()
    groups = {
        name: [p for pid in pids for p in process_tree(pid)] for name, pids in setup.groups.items()
    }
    groups["sipp"] = [process.pid for process, _ in phones]
    cpu = sample_cpu(groups, args.duration)
    for process, _ in phones:
        try:
            process.wait(timeout=args.duration + 25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    step = Step(per_phone * setup.phones)
    for name in groups:
        step.cpu[name] = cpu.pct(name)
    for _, stats in phones:
        rows = read_stats(stats)
        if not rows:
            continue
        step.created += int(rows[-1]["OutgoingCall(C)"])
        step.successful += int(rows[-1]["SuccessfulCall(C)"])
        step.failed += int(rows[-1]["FailedCall(C)"])
        achieved = window_rate(rows, started + cpu.warm, started + args.duration - 0.5)
        if achieved is not None:
            step.achieved += achieved
    return step


async def seed(dsn: str, phones: int) -> None:
    from sipfleet.sip.digest import compute_ha1
    from sipfleet.storage import Dsn, Subscriber, open_storage
    from sipfleet.storage.migrate import upgrade

    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    try:
        for i in range(phones):
            name = f"u{i:05d}"
            await storage.subscribers.add(
                Subscriber(
                    name,
                    DOMAIN,
                    compute_ha1(name, DOMAIN, PASSWORD, "MD5"),
                    compute_ha1(name, DOMAIN, PASSWORD, "SHA-256"),
                )
            )
    finally:
        await storage.close()


@contextlib.contextmanager
def register_cluster(args: argparse.Namespace, workdir: Path) -> Iterator[Setup]:
    from tests.dbservers import start_mariadb_primary, start_mariadb_replica, wait_replicated

    from sipfleet.storage import open_storage

    primary = start_mariadb_primary()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        replica = start_mariadb_replica(primary)
        try:
            primary_dsn = primary.create_database("capacity")
            asyncio.run(seed(primary_dsn, args.phones))
            wait_replicated(primary, replica)
            registrar_port, lb_port = free_udp_port(), free_udp_port()
            text = node_toml("registrar", workdir, primary_dsn).replace(
                "\n\n[sip]\n", '\n\n[sip]\nauth_algorithms = ["MD5"]\n'
            )
            text += (
                f'[registrar]\nlisten = ["udp:127.0.0.1:{registrar_port}"]\n'
                f"authenticate = {'true' if args.auth else 'false'}\n"
            )
            processes.append(start_role("registrar", text, workdir, "registrar"))
            text = node_toml("lb", workdir, primary_dsn)
            text += f'[lb]\nlisten = ["udp:127.0.0.1:{lb_port}"]\nkeepalive = false\n'
            text += "probe_interval_s = 1.0\n"
            text += EDGE_OFF  # a section of its own: after every [lb] key
            processes.append(start_role("lb", text, workdir, "lb"))

            async def target() -> None:
                storage = open_storage(primary_dsn)
                try:
                    await storage.lb_targets.add("registrar", f"sip:127.0.0.1:{registrar_port}")
                finally:
                    await storage.close()

            asyncio.run(target())
            time.sleep(3)  # the LB reloads its pools and probes the registrar
            scenario = workdir / "register.xml"
            scenario.write_text(register_scenario(args.auth))
            assert primary.process is not None
            assert replica.process is not None
            groups = {
                "lb": [processes[1].pid],
                "registrar": [processes[0].pid],
                "primary": [primary.process.pid],
                "replica": [replica.process.pid],
            }
            yield Setup(lb_port, scenario, workdir, groups, args.phones)
        finally:
            for process in reversed(processes):
                stop(process)
            replica.destroy()
    finally:
        primary.destroy()


def measure(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sipfleet-capacity-"))
    rates = [int(r) for r in args.rates.split(",") if r.strip()][:8]
    args.duration = max(4, min(args.duration, 60))
    args.phones = max(1, min(args.phones, 100))
    args.users = max(args.users, args.phones)
    try:
        with register_cluster(args, workdir) as setup:
            print(
                f"REGISTER through LB (1 worker) -> registrar -> MariaDB primary + replica; "
                f"digest auth {'on (401 round each time)' if args.auth else 'off'}; "
                f"{setup.phones} phones"
            )
            print("  rate   created      ok  failed    ok/s   CPU % of one core, us/REGISTER")
            for rate in rates:
                step = run_step(args, rate, setup)
                groups = "  ".join(
                    f"{name} {step.cpu[name]:5.1f}% {step.us_per_register(name):5.0f}us"
                    for name in ("lb", "registrar", "primary", "replica", "sipp")
                )
                print(
                    f"{step.rate:6d}  {step.created:7d}  {step.successful:6d}  {step.failed:6d}"
                    f"  {step.achieved:6.1f}  {groups}  load {os.getloadavg()[0]:4.1f}"
                    f"  {'pass' if step.passed else 'FAIL'}",
                    flush=True,
                )
                time.sleep(2)
    finally:
        if not os.environ.get("CAPACITY_KEEP"):
            subprocess.run(["rm", "-rf", str(workdir)], check=False)


# -- measure-db: the primary's write rate with a replica following -------------------------
@contextlib.contextmanager
def replicated_pair(backend: str, options: dict[str, str]) -> Iterator[tuple[Any, Any]]:
    """A durable primary (fsync at commit) with a replica following: MariaDB with its binary
    log and a GTID replica, or PostgreSQL with a hot standby streaming the WAL."""
    from tests import dbservers

    if backend == "postgres":
        primary: Any = dbservers.start_postgres_primary(options)
        start_replica: Any = dbservers.start_postgres_standby
    else:
        primary = dbservers.start_mariadb_primary(options)
        start_replica = dbservers.start_mariadb_replica
    try:
        replica = start_replica(primary)
        try:
            yield primary, replica
        finally:
            replica.destroy()
    finally:
        primary.destroy()


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, with the children they have reaped (a
    PostgreSQL server is a postmaster with a process per connection; MariaDB is one)."""
    total = 0.0
    for each in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat_fields(Path(f"/proc/{each}/stat").read_text())
            total += sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def wait_for_reaping(pid: int, idle: int, timeout: float = 5.0) -> None:
    """Until the closed connections' processes are gone (their CPU then counts in their
    parent's cutime), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(process_tree(pid)) > idle and time.monotonic() < deadline:
        time.sleep(0.02)


def measure_db(args: argparse.Namespace) -> None:
    """Saves as the registrar makes them (storage_bench's REGISTER), straight into a
    replicated primary: saves/s, CPU per save on the primary and on the replica, and how
    far the replica lags at the end."""
    from tests.dbservers import wait_caught_up

    from bench.storage_bench import phase
    from bench.storage_bench import register as binding_of
    from bench.storage_bench import user as aor_of
    from sipfleet.storage import Dsn, open_storage
    from sipfleet.storage.migrate import upgrade

    options = dict(option.split("=", 1) for option in args.primary_option)
    with replicated_pair(args.backend, options) as (primary, replica):
        dsn = primary.create_database("writes")
        asyncio.run(upgrade(Dsn.parse(dsn)))
        pids = {"primary": primary.process.pid, "replica": replica.process.pid}
        idle = {name: len(process_tree(pid)) for name, pid in pids.items()}
        kind = "a PostgreSQL primary" if args.backend == "postgres" else "a MariaDB primary"
        follower = "a hot standby" if args.backend == "postgres" else "a replica"
        print(
            f"saves into {kind} (durable: fsync at commit; {options or 'defaults'})"
            f" with {follower} following; {args.users} users, at most {args.seconds:g} s "
            "per step"
        )
        print("in flight   saves/s   primary us/save   replica us/save   replica lag s")

        async def run(concurrency: int, cseq: int) -> tuple[int, float]:
            storage = open_storage(dsn, pool_size=concurrency, max_in_flight=4 * concurrency)
            try:

                async def save(i: int) -> object:
                    bindings = binding_of(i, cseq)
                    return await storage.location.save(
                        aor_of(i), bindings, now=int(time.time()), max_contacts=10
                    )

                return await phase(concurrency, args.users, args.seconds, save)
            finally:
                await storage.close()

        asyncio.run(run(32, 1))  # every user once: the table as it is in steady state
        wait_caught_up(primary, replica, timeout=120)
        for n, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
            before = {name: tree_cpu(pid) for name, pid in pids.items()}
            done, took = asyncio.run(run(concurrency, 2 + n))
            started = time.monotonic()
            wait_caught_up(primary, replica, timeout=120)
            lag = time.monotonic() - started
            for name, pid in pids.items():
                wait_for_reaping(pid, idle[name])
            after = {name: tree_cpu(pid) for name, pid in pids.items()}
            us = {k: (after[k] - before[k]) / max(done, 1) * 1e6 for k in pids}
            print(
                f"{concurrency:9d}  {done / took:8,.0f}  {us['primary']:16.0f}"
                f"  {us['replica']:16.0f}  {lag:14.1f}   load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


# -- the model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    us: float  # CPU microseconds of one core per operation
    command: str  # what measured it (docs/capacity.md has the runs)


MEASURE = "bench/capacity_model.py measure --rates 200,400,600 --duration 10"
MEASURE_NO_AUTH = "bench/capacity_model.py measure --no-auth --rates 300,500 --duration 10"
CALLS = "bench/call_bench.py --lb --mariadb --rates 600,1200,1750,2400 --duration 10"
KEEPALIVE = "bench/keepalive_bench.py"

# Measured on the project's machine (2 cores shared with other work) at commit bdbdc63;
# docs/capacity.md has each run with its date and load average. Each figure is from the
# highest step that passed; CPU per operation falls as the rate rises, so these are on
# the safe side. REGISTER with authentication: challenged every time (REGISTER, 401,
# REGISTER, 200). Calls: INVITE, 100, 180, 200, ACK, BYE, 200 without caller
# authentication, the callee looked up in MariaDB.
COSTS: dict[str, Cost] = {
    "register_lb": Cost(739, MEASURE),
    "register_registrar": Cost(1200, MEASURE),
    "register_primary": Cost(1037, MEASURE),  # SQL, binary log, feeding the replica
    "register_replica": Cost(252, MEASURE),  # applying the row events
    "register_noauth_lb": Cost(576, MEASURE_NO_AUTH),
    "register_noauth_registrar": Cost(904, MEASURE_NO_AUTH),
    "register_noauth_primary": Cost(897, MEASURE_NO_AUTH),
    "call_lb": Cost(300, CALLS),
    "call_proxy": Cost(439, CALLS),
    "call_db": Cost(96, CALLS),  # the lookup, on the database the proxy reads
    "keepalive_options": Cost(22, KEEPALIVE),
    "keepalive_crlf": Cost(10, KEEPALIVE),
}


MEASURE_DB = "bench/capacity_model.py measure-db --concurrency 64,32,8,32 --seconds 10"
GALERA = "bench/galera_conflicts.py"
# A primary's write rate measured on this machine with a replica following (saves/s at 32
# in flight, group commit; the lowest of the runs on 2026-12-04 after the first step,
# which the table's warm-up disturbs; docs/capacity.md has every run): a floor set by two
# shared cores, not a ceiling. Galera: two of three nodes writing, their own AORs each.
WRITE_RATES: dict[str, tuple[float, str]] = {
    "MariaDB + replica, sync_binlog=0": (3915, MEASURE_DB),
    "MariaDB + replica, sync_binlog=1": (4229, f"{MEASURE_DB} --primary-option sync-binlog=1"),
    "PostgreSQL + hot standby": (4730, f"{MEASURE_DB} --backend postgres"),
    "Galera, 3 nodes, 2 writing": (4149, GALERA),
}


def auth_extra(part: str) -> float:
    """What digest authentication adds per request (the challenge round, reading HA1,
    checking the digest): measured on REGISTER, applied to a call's INVITE."""
    c = {name: cost.us for name, cost in COSTS.items()}
    return c[f"register_{part}"] - c[f"register_noauth_{part}"]


@dataclass
class Load:
    """Operations per second that ``subscribers`` cause."""

    registers: float
    calls: float
    pings: float


def load_of(subscribers: float, args: argparse.Namespace) -> Load:
    """A phone with several flows (RFC 5626: one per LB it uses as an outbound proxy)
    registers each and each is pinged, by its own LB; it is called over one."""
    flows = subscribers * args.flows
    return Load(
        registers=flows / args.reregister,
        calls=subscribers * args.bhca / 3600,
        pings=flows * args.nat_share / args.keepalive_interval if args.keepalive else 0,
    )


def cpu_per_second(kind: str, load: Load, args: argparse.Namespace) -> float:
    """CPU µs per second that ``load`` costs the nodes of one kind, all together."""
    c = {name: cost.us for name, cost in COSTS.items()}
    ping = c[f"keepalive_{args.keepalive}"] if args.keepalive else 0.0
    auth = args.call_auth
    if kind == "lb":
        call = c["call_lb"] + (auth_extra("lb") if auth else 0)
        return load.registers * c["register_lb"] + load.calls * call + load.pings * ping
    if kind == "registrar":
        return load.registers * c["register_registrar"]
    if kind == "proxy":
        return load.calls * (c["call_proxy"] + (auth_extra("registrar") if auth else 0))
    if kind == "primary":
        return load.registers * c["register_primary"]
    if kind == "replica":
        call = c["call_db"] + (auth_extra("primary") if auth else 0)  # HA1 read, on the replica
        return load.registers * c["register_replica"] + load.calls * call
    raise ValueError(kind)


# One node of each kind: an LB worker process (the LB runs one per core), a registrar
# process, a proxy process, one core of the primary, one core of a replica. MariaDB
# applies the row events on one thread (unless slave_parallel_threads is set), so each
# replica's apply work must also fit one core.
KINDS = ("lb", "registrar", "proxy", "primary", "replica")
UNITS = {
    "lb": "LB cores",
    "registrar": "registrars",
    "proxy": "proxies",
    "primary": "primary cores",
    "replica": "replica cores",
}


def per_node(kind: str, args: argparse.Namespace) -> float:
    """Subscribers one node of ``kind`` carries within the core budget."""
    return float(args.core_budget) * 1e6 / cpu_per_second(kind, load_of(1, args), args)


def apply_share(subscribers: float, args: argparse.Namespace) -> float:
    """Share of one core a replica's (single) apply thread needs for ``subscribers``."""
    return load_of(subscribers, args).registers * COSTS["register_replica"].us / 1e6


def table(args: argparse.Namespace) -> None:
    ping = f"{args.nat_share:.0%} pinged every {args.keepalive_interval:g} s ({args.keepalive})"
    print(
        f"REGISTER every {args.reregister:g} s; {args.bhca:g} call attempts per subscriber "
        f"in the busy hour (caller authentication {'on' if args.call_auth else 'off'}); "
        f"{ping if args.keepalive else 'no keepalives'}; {args.flows} flow(s) per phone; "
        f"{args.core_budget:.0%} of a core per node\n"
    )
    carried = {kind: per_node(kind, args) for kind in KINDS}
    print("one node carries:")
    for kind in KINDS:
        print(f"  1 of {UNITS[kind]:<14} {carried[kind]:>12,.0f} subscribers")
    first = min(carried, key=carried.__getitem__)
    print(f"  first bottleneck: {UNITS[first]}")
    for setting, (rate, _) in WRITE_RATES.items():
        subscribers = args.core_budget * rate * args.reregister / args.flows
        print(f"  the primary measured here, {setting}: {rate:,.0f} saves/s = {subscribers:,.0f}")
    print()
    sizes = [int(s) for s in args.subscribers.split(",")]
    header = f"{'subscribers':>12} {'REGISTER/s':>10} {'calls/s':>8} {'pings/s':>8}"
    print(header + "".join(f" {UNITS[k]:>14}" for k in KINDS) + "  replica apply thread")
    for size in sizes:
        load = load_of(size, args)
        nodes = [math.ceil(size / carried[kind]) for kind in KINDS]
        print(
            f"{size:>12,} {load.registers:>10,.0f} {load.calls:>8,.0f} {load.pings:>8,.0f}"
            + "".join(f" {n:>14}" for n in nodes)
            + f"  {apply_share(size, args):>19.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="REGISTER through LB and registrar to a replicated MariaDB")
    m.add_argument("--rates", default="200,400", help="REGISTERs/s, comma-separated")
    m.add_argument("--duration", type=int, default=10, help="seconds per step (<= 60)")
    m.add_argument("--phones", type=int, default=50, help="sipp processes")
    m.add_argument(
        "--users", type=int, default=5000, help="users without auth (with auth: one per phone)"
    )
    m.add_argument("--no-auth", dest="auth", action="store_false", help="registrar without digest")
    d = sub.add_parser("measure-db", help="a replicated primary's write rate")
    d.add_argument("--backend", choices=["mariadb", "postgres"], default="mariadb")
    d.add_argument("--concurrency", default="8,32", help="saves in flight, comma-separated")
    d.add_argument("--users", type=int, default=20000, help="saves per step at most")
    d.add_argument("--seconds", type=float, default=10.0, help="time per step at most")
    d.add_argument(
        "--primary-option", action="append", default=[], metavar="KEY=VALUE",
        help="a server option for the primary, e.g. sync-binlog=1 (MariaDB)",
    )  # fmt: skip
    t = sub.add_parser("table", help="the capacity model")
    t.add_argument("--reregister", type=float, default=3600, help="seconds between REGISTERs")
    t.add_argument("--bhca", type=float, default=1.0, help="busy-hour calls per subscriber")
    t.add_argument("--no-call-auth", dest="call_auth", action="store_false")
    t.add_argument("--nat-share", type=float, default=1.0, help="share of subscribers pinged")
    t.add_argument("--keepalive-interval", type=float, default=20.0)
    t.add_argument("--keepalive", choices=["options", "crlf", ""], default="options")
    t.add_argument(
        "--flows", type=int, default=1, help="flows per phone (2: two LBs as outbound proxies)"
    )
    t.add_argument("--core-budget", type=float, default=0.7, help="share of a core per node")
    t.add_argument("--subscribers", default="100000,1000000,2000000,5000000,10000000")
    args = parser.parse_args()
    if args.command == "measure":
        measure(args)
    elif args.command == "measure-db":
        measure_db(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
