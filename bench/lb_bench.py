"""Stateless forwarding through the LB: sipfleet's LB and Kamailio's, same run, same workers.

    .venv/bin/python bench/lb_bench.py                       # both, 4 workers / children
    .venv/bin/python bench/lb_bench.py --workers 2 --duration 10 --start 6000

For each system: a sipp UAS answering OPTIONS with 200 (bench/sipp/echo_uas.xml), the LB
in front of it (sipfleet: `sipfleet run lb` with the UAS as its only proxy-pool target and
``node.workers``; Kamailio: bench/kamailio/lb.cfg, the anchor's stateless LB job written
here, with ``-n`` children and the tlsf allocator), and a sipp UAC ramping OPTIONS to sip:echo@LB
(bench/sipp/echo_uac.xml). A step passes when failed + unfinished calls are < 1 % and the
rate achieved in the window is >= 97 % of the target (bench/relay_bench.py's method); the
rate goes up by ``--factor`` while steps pass, then bisects. CPU is that of the whole
process tree of each LB (supervisor and workers / children) from /proc, per request +
response pair at the achieved rate. The same number of workers is the point: on this
2-core box the load generator shares the cores, so compare CPU per pair as well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import (  # noqa: E402
    HZ,
    all_ticks,
    cpu_ticks,
    free_udp_port,
    measured,
    others_pct,
    process_tree,
    ramp_rates,
    read_stats,
    score,
    sipp,
    started,
    udp_drops,
    wait_for_quiet,
    wait_idle,
)
from bench.relay_bench import Step, report  # noqa: E402

KAMAILIO_CFG = BENCH / "kamailio" / "lb.cfg"


# -- CPU of a process tree ------------------------------------------------------------------
def tree(root: int) -> set[int]:
    """``root`` and every process below it."""
    return set(process_tree(root))


def ticks(pids: set[int]) -> int:
    return sum(cpu_ticks(pid) for pid in pids)


# -- the systems under test ---------------------------------------------------------------
def wait_bound(port: int, timeout: float = 20.0) -> None:
    """Until something listens on UDP 127.0.0.1:port."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _udp_bound(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on udp port {port}")


def _udp_bound(port: int) -> bool:
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        if int(line.split()[1].split(":")[1], 16) == port:
            return True
    return False


# The edge guard (docs/lb.md) as the benchmarks set it: one source sends all the load.
EDGE = {
    "no-rate": "[edge]\nrate_per_s = 0\n",  # no per-source limit; scanner filter, lockouts on
    "off": "[edge]\nrate_per_s = 0\nscanner_filter = false\nlockout_failures = 0\n",
    "on": "[edge]\nrate_per_s = 1000000\nburst = 1000000\n",  # every check run, none blocks
}


def sipfleet_lb_command(
    workers: int,
    echo_port: int,
    port: int,
    workdir: Path,
    python: Sequence[str] = (),
    edge: str = "no-rate",
) -> list[str]:
    """`sipfleet run lb` on 127.0.0.1:``port`` with the UAS at ``echo_port`` as its only
    proxy-pool target (database made and filled here); it writes ``workdir/lb.ready``.
    ``python``: the interpreter and its options (default: this one)."""
    database = workdir / "sipfleet.db"
    config = workdir / "lb.toml"
    config.write_text(
        f'[node]\nname = "bench-lb"\ndata_dir = "{workdir}"\nworkers = {workers}\n'
        'cluster_secret = "bench"\n'
        f'[database]\nwrite = "sqlite:///{database}"\n'
        f'[lb]\nlisten = ["udp:127.0.0.1:{port}"]\nkeepalive = false\n' + EDGE[edge]
    )
    cli = [sys.executable, "-m", "sipfleet"]
    subprocess.run([*cli, "db", "upgrade", "-c", str(config)], check=True)
    subprocess.run(
        [*cli, "lb", "target", "add", f"sip:127.0.0.1:{echo_port}", "--pool", "proxy",
         "-c", str(config)],
        check=True,
    )  # fmt: skip
    ready = workdir / "lb.ready"
    ready.unlink(missing_ok=True)
    run = ["-m", "sipfleet", "run", "lb", "-c", str(config), "--ready-file", str(ready)]
    return [*(python or [sys.executable]), *run, "--log-level", "warning"]


def kamailio_lb_command(children: int, echo_port: int, port: int, workdir: Path) -> list[str]:
    """Kamailio with the anchor's stateless LB config on 127.0.0.1:``port``."""
    config = workdir / "kamailio-lb.cfg"
    text = KAMAILIO_CFG.read_text()
    for name, value in (
        ("LB_PORT", port),
        ("ECHO_PORT", echo_port),
        ("PROXY_PORT", free_udp_port()),
        ("REGISTRAR_PORT", free_udp_port()),
    ):
        text = text.replace(f"@{name}@", str(value))
    config.write_text(text)
    rundir = workdir / "kamailio"
    rundir.mkdir(exist_ok=True)
    return [
        "kamailio", "-f", str(config), "-DD", "-E", "-n", str(children), "-m", "256", "-M", "16",
        "-x", "tlsf", "-X", "tlsf", "-Y", str(rundir), "-w", str(rundir),
    ]  # fmt: skip


@contextlib.contextmanager
def sipfleet_lb(workers: int, echo_port: int, workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_udp_port()
    command = sipfleet_lb_command(workers, echo_port, port, workdir)
    ready = workdir / "lb.ready"
    with started(command, workdir / "sipfleet-lb.log") as (process, _):
        deadline = time.time() + 30
        while not ready.exists():
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"sipfleet LB did not start, see {workdir / 'sipfleet-lb.log'}")
            time.sleep(0.1)
        time.sleep(1.5)  # the first health probe has answered
        yield process.pid, port


@contextlib.contextmanager
def kamailio_lb(children: int, echo_port: int, workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_udp_port()
    command = kamailio_lb_command(children, echo_port, port, workdir)
    with started(command, workdir / "kamailio-lb.log") as (process, _):
        wait_bound(port)
        time.sleep(1.0)
        yield process.pid, port


SYSTEMS = {"sipfleet": sipfleet_lb, "kamailio": kamailio_lb}


# -- steps and ramps ----------------------------------------------------------------------------
def run_step(
    args: argparse.Namespace,
    system: str,
    lb: tuple[int, int],
    uas: tuple[int, int],
    rate: int,
    workdir: Path,
) -> Step:
    lb_pid, lb_port = lb
    uas_pid, uas_port = uas
    stat_file = workdir / f"{system}-{rate}-stat.csv"
    stat_file.unlink(missing_ok=True)
    calls = rate * args.duration
    ports = {"relay": lb_port, "uas": uas_port, "uac": free_udp_port()}
    dropped_before = udp_drops(ports)
    options = (
        f"-p {ports['uac']} -r {rate} -rp 1000 -m {calls} -l {max(200, 2 * rate)}"
        f" -timeout {args.duration + 15}s -recv_timeout 5000 -trace_stat -fd 1"
    )
    cmd = sipp("echo_uac.xml", f"127.0.0.1:{lb_port}", *options.split(), "-stf", str(stat_file))
    begin = time.time()
    with started(cmd, workdir / f"{system}-{rate}-uac.log") as (uac, _):
        warm = min(3.0, args.duration / 4)
        time.sleep(warm)
        groups = {"relay": tree(lb_pid), "uac": {uac.pid}, "uas": {uas_pid}}
        mine = {os.getpid(), *set().union(*groups.values())}
        before = {name: ticks(pids) for name, pids in groups.items()}
        everyone, t0 = all_ticks(), time.time()
        time.sleep(max(1.0, args.duration - 1 - warm))
        after = {name: ticks(pids) for name, pids in groups.items()}
        seconds = time.time() - t0
        others = others_pct(everyone, all_ticks(), seconds, mine)
        dropped = udp_drops(ports)
        try:
            uac.wait(timeout=args.duration + 25)
        except subprocess.TimeoutExpired:
            uac.kill()
    cpu = {n: round(100.0 * (after[n] - before[n]) / HZ / seconds, 1) for n in groups}
    drops = {name: dropped[name] - dropped_before[name] for name in ports}
    step = Step(system, rate, False, cpu=cpu, others_pct=others, drops=drops)
    rows = read_stats(stat_file)
    if rows:  # no fallback rate without a window: too few rows there fails the step
        score(step, rows, (begin + warm, begin + args.duration - 0.5), calls)
    return step


def drain(pids: set[int], max_wait: float = 30.0) -> None:
    wait_idle(lambda: ticks(pids), max_wait)


def ramp(args: argparse.Namespace, system: str, workdir: Path) -> list[Step]:
    uas_port = free_udp_port()
    budget = args.max_steps * (args.duration + 45) + 60
    uas_cmd = sipp("echo_uas.xml", "-p", str(uas_port), "-timeout", f"{budget}s")
    with (
        started(uas_cmd, workdir / f"{system}-uas.log") as (uas, _),
        SYSTEMS[system](args.workers, uas_port, workdir) as lb,
    ):

        def settle() -> None:
            wait_for_quiet(args, {os.getpid(), uas.pid, *tree(lb[0])})
            drain(tree(lb[0]))

        def step_at(rate: int) -> Step:
            def run() -> Step:
                return run_step(args, system, lb, (uas.pid, uas_port), rate, workdir)

            return measured(args, settle, run, report)

        steps = ramp_rates(args, step_at)
    return steps


def summary(results: dict[str, list[Step]], workers: int) -> str:
    lines = [
        "",
        f"LB ({workers} workers)  max rate/s  LB CPU %  LB µs/pair  uac+uas CPU %  first fail/s",
        "-------------------  ----------  --------  ----------  -------------  ------------",
    ]
    best: dict[str, Step | None] = {}
    for system, steps in results.items():
        passed = [s for s in steps if s.passed]
        top = max(passed, key=lambda s: s.rate) if passed else None
        best[system] = top
        failed = [s.rate for s in steps if not s.passed and (top is None or s.rate > top.rate)]
        if top is None:
            lines.append(f"{system:19}  {'none':>10}")
            continue
        lines.append(
            f"{system:19}  {top.rate:10}  {top.cpu['relay']:8.1f}  {top.relay_us_per_pair:10.1f}"
            f"  {top.cpu['uac'] + top.cpu['uas']:13.1f}  {min(failed, default='-')!s:>12}"
        )
    ours, theirs = best.get("sipfleet"), best.get("kamailio")
    if ours is not None and theirs is not None:
        lines.append(
            f"\nsipfleet / Kamailio: rate {ours.rate / theirs.rate:.2f}, "
            f"CPU per pair {ours.relay_us_per_pair / theirs.relay_us_per_pair:.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default="sipfleet,kamailio")
    parser.add_argument(
        "--workers", type=int, default=4, help="sipfleet workers = Kamailio children"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per step")
    parser.add_argument("--start", type=int, default=5000, help="first rate (OPTIONS/s)")
    parser.add_argument("--factor", type=float, default=1.25)
    parser.add_argument("--bisect", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=8, help="per system")
    parser.add_argument("--max-others", type=float, default=15.0)
    parser.add_argument("--quiet-wait", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="write every step here")
    args = parser.parse_args()
    results: dict[str, list[Step]] = {}
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        for system in args.systems.split(","):
            workdir = Path(tmp) / system
            workdir.mkdir()
            results[system] = ramp(args, system, workdir)
    print(summary(results, args.workers))
    if args.json:
        data = {s: [asdict(step) for step in steps] for s, steps in results.items()}
        args.json.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
