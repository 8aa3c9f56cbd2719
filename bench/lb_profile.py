"""The LB's CPU per request + response pair: one process, a fixed number of OPTIONS pairs.

    .venv/bin/python bench/lb_profile.py                          # lb, floor-socket, kamailio: CPU
    .venv/bin/python bench/lb_profile.py --relays lb,relay --pairs 200000 --rate 20000
    .venv/bin/python bench/lb_profile.py --relays lb --instructions 20000 --keep /tmp/lb.cg
    .venv/bin/python bench/lb_profile.py --relays lb --perf-record /tmp/lb.perf
    .venv/bin/python bench/lb_profile.py --relays lb,kamailio --processes 2 --rate 15000

A sipp UAS answers OPTIONS with 200 (bench/sipp/echo_uas.xml); the relay under test stands
in front of it; a sipp UAC sends ``--pairs`` OPTIONS to sip:echo@relay at ``--rate`` with
at most ``--window`` unanswered (bench/sipp/echo_uac.xml), the anchor's s4 exchange.

Relays, each with one process doing the work (``--processes N``: N, for ``lb`` and
``kamailio``, the anchor's s4 and k4_c2 with 2):
- ``lb``: ``sipfleet run lb``, ``node.workers = 1``, the UAS its only proxy-pool target
  (configured as bench/lb_bench.py does; ``force_rport`` on, as by default);
- ``relay``: bench/relay_sipfleet.py, the stateless forwarder without the LB's decisions;
- ``floor`` / ``floor-socket``: bench/relay_floor.py, the least a Python relay on uvloop
  does (one Via line in, one out; ``floor-socket`` sends on the socket as sipfleet does);
- ``kamailio``: Kamailio as the anchor's stateless LB (bench/kamailio/lb.cfg),
  ``-n 1``, tlsf.

Figures, per pair sipp counted as successful:
- default: CPU of the relay's process tree over the run (the scheduler's runtime, split
  into user and system by the tick counts), less what it used idle over as long; and its
  context switches per 1,000 pairs: waits (it slept, for a datagram) and preemptions (it
  was taken off its core while it had work: a sipp woken by its send, on this core);
- ``--instructions N``: user-space instructions, counted by callgrind on the relay's
  processes with collection switched on (``callgrind_control -i on``) only for N pairs,
  after a warm-up; the kernel's share is not in them. ``--keep FILE`` keeps callgrind's
  output for ``callgrind_annotate --inclusive=yes FILE``;
- ``--perf-record FILE``: ``perf record -e cpu-clock -g`` of the relay over the run
  (kernel and user; Python run with ``-X perf`` so interpreted frames have names);
  ``--strace FILE``: ``strace -c`` (system calls counted, which slows the relay: its
  CPU figure is then not comparable).

Run it under ``flock /tmp/sipfleet-bench.lock`` on a shared machine. Timings move with
other load; instruction counts do not.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import (  # noqa: E402
    VALGRIND,
    callgrind_control,
    collected,
    cpu_of,
    free_udp_port,
    process_tree,
    read_stats,
    sipp,
    started,
)
from bench.lb_bench import EDGE, kamailio_lb_command, sipfleet_lb_command, wait_bound  # noqa: E402


# -- the relays ---------------------------------------------------------------------------------
def python_relay_command(script: str, echo_port: int, port: int, python: list[str]) -> list[str]:
    name, *extra = script.split()
    target = ["--target", f"127.0.0.1:{echo_port}", "--listen", f"127.0.0.1:{port}"]
    return [*python, str(BENCH / name), *target, *extra]


PYTHON_RELAYS = {
    "relay": "relay_sipfleet.py",
    "floor": "relay_floor.py",
    "floor-socket": "relay_floor.py --socket-send",
}


@contextlib.contextmanager
def relay_running(
    relay: str, workdir: Path, echo_port: int, args: argparse.Namespace
) -> Iterator[tuple[int, int]]:
    """(pid, port) of ``relay`` started in front of the UAS at ``echo_port``."""
    port = free_udp_port()
    python = [sys.executable, *(["-X", "perf"] if args.perf_record else [])]
    wrapper = (
        [*VALGRIND, f"--callgrind-out-file={workdir}/callgrind.%p"] if args.instructions else []
    )
    if relay == "lb":
        command = sipfleet_lb_command(args.processes, echo_port, port, workdir, python, args.edge)
    elif relay == "kamailio":
        command = kamailio_lb_command(args.processes, echo_port, port, workdir)
        wrapper = [*wrapper, "--trace-children=yes"] if wrapper else []
    else:
        command = python_relay_command(PYTHON_RELAYS[relay], echo_port, port, python)
    with started([*wrapper, *command], workdir / f"{relay}.log") as (process, _):
        wait_bound(port, timeout=300 if wrapper else 30)
        if relay == "lb":
            deadline = time.time() + (300 if wrapper else 30)
            while not (workdir / "lb.ready").exists() and time.time() < deadline:
                time.sleep(0.1)
        time.sleep(1.5)  # the LB's first health probe has been answered
        yield process.pid, port


# -- the load -----------------------------------------------------------------------------------
def drive(port: int, pairs: int, rate: int, window: int, workdir: Path, name: str) -> int:
    """``pairs`` OPTIONS through the relay at ``port``; the number answered 200."""
    stats = workdir / f"{name}-stat.csv"
    stats.unlink(missing_ok=True)
    seconds = pairs // max(rate // 4, 1) + 60  # sipp stops by then, sent or not
    options = (
        f"-p {free_udp_port()} -r {rate} -rp 1000 -m {pairs} -l {window}"
        f" -timeout {seconds}s -recv_timeout 5000 -trace_stat -fd 1"
    )
    command = sipp("echo_uac.xml", f"127.0.0.1:{port}", *options.split(), "-stf", str(stats))
    log = workdir / f"{name}-uac.log"
    with log.open("wb") as out:
        subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False,
            timeout=seconds + 30,
        )  # fmt: skip
    rows = read_stats(stats)
    return int(rows[-1]["SuccessfulCall(C)"]) if rows else 0


# -- what is measured ------------------------------------------------------------------------------
def cpu_per_pair(relay: str, pid: int, port: int, args: argparse.Namespace, workdir: Path) -> None:
    drive(port, args.pairs // 10, args.rate, args.window, workdir, f"{relay}-warm")
    pids = process_tree(pid)
    idle_start, t0 = cpu_of(pids), time.time()
    time.sleep(2.0)
    idle_total, idle_system = (a - b for a, b in zip(cpu_of(pids), idle_start, strict=True))
    idle_seconds = time.time() - t0
    before, t0 = cpu_of(pids), time.time()
    switches_before = switches_of(pids)
    recorders = [
        attach(tool, pid, out)
        for tool, out in (("perf", args.perf_record), ("strace", args.strace))
        if out
    ]
    answered = drive(port, args.pairs, args.rate, args.window, workdir, relay)
    for recorder in recorders:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    total, system = (a - b for a, b in zip(cpu_of(pids), before, strict=True))
    waits, preempted = (a - b for a, b in zip(switches_of(pids), switches_before, strict=True))
    seconds = time.time() - t0
    total -= idle_total * seconds / idle_seconds
    system -= idle_system * seconds / idle_seconds
    if not answered:
        print(f"{relay:13} no pair answered (see {workdir})")
        return
    us = 1e6 / answered
    print(
        f"{relay:13} {answered:8} pairs in {seconds:5.1f} s: {total * us:6.2f} µs CPU per pair"
        f" (user {(total - system) * us:6.2f}, system {system * us:6.2f});"
        f" per 1,000 pairs {waits * 1000 / answered:5.0f} waits,"
        f" {preempted * 1000 / answered:5.0f} preemptions",
        flush=True,
    )


def switches_of(pids: list[int]) -> tuple[int, int]:
    """Voluntary (the process waited) and involuntary (it was preempted) context
    switches of ``pids``, summed over their threads."""
    waits = preempted = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        waits += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        preempted += int(line.split()[1])
    return waits, preempted


def attach(tool: str, pid: int, output: Path) -> subprocess.Popen[bytes]:
    """perf record (cpu-clock, call graphs) or strace -c (system calls counted) on ``pid``
    and its threads, until SIGINT."""
    if tool == "perf":
        command = ["perf", "record", "-e", "cpu-clock", "-g", "-o", str(output), "-p", str(pid)]
    else:
        command = ["strace", "-c", "-f", "-o", str(output), "-p", str(pid)]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return recorder


def instructions_per_pair(
    relay: str, pid: int, port: int, args: argparse.Namespace, workdir: Path
) -> None:
    pairs = args.instructions
    drive(port, 2000, 500, args.window, workdir, f"{relay}-warm")
    pids = [str(p) for p in process_tree(pid) if _under_valgrind(p)]
    callgrind_control("-i", "on", *pids)
    answered = drive(port, pairs, args.rate, args.window, workdir, relay)
    callgrind_control("-i", "off", *pids)
    callgrind_control("-d", *pids)
    total = sum(collected(path) for path in workdir.glob("callgrind.*"))
    if args.keep and relay == args.relays.split(",")[0]:
        dumps = [path for path in workdir.glob("callgrind.*") if collected(path)]
        for number, path in enumerate(dumps):
            Path(f"{args.keep}{f'.{number}' if number else ''}").write_bytes(path.read_bytes())
    if not answered:
        print(f"{relay:13} no pair answered (see {workdir})")
        return
    per_pair = total / answered / 1000
    print(f"{relay:13} {answered:8} pairs: {per_pair:7.1f}k user instructions per pair", flush=True)


def _under_valgrind(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return "valgrind" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--relays", default="lb,floor-socket,kamailio")
    parser.add_argument("--pairs", type=int, default=200_000, help="pairs measured (CPU)")
    parser.add_argument("--rate", type=int, default=20_000, help="OPTIONS/s offered at most")
    parser.add_argument("--window", type=int, default=64, help="unanswered OPTIONS at most")
    parser.add_argument(
        "--instructions", type=int, metavar="PAIRS", help="count instructions (callgrind)"
    )
    parser.add_argument("--keep", type=Path, help="with --instructions: keep the first's file")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="the LB's workers and Kamailio's children (the anchor's s4 and k4_c2: 2)",
    )
    parser.add_argument("--perf-record", type=Path, help="perf record the first relay's run")
    parser.add_argument("--strace", type=Path, help="strace -c the first relay's run")
    parser.add_argument(
        "--edge",
        choices=sorted(EDGE),
        default="no-rate",
        help="the LB's edge guard: off, on (every check, none blocks), no-rate (the default)",
    )
    args = parser.parse_args()
    if args.instructions and args.processes > 1:
        # the workers are started afresh, not under callgrind: they would count nothing
        parser.error("--instructions counts one process: use it with --processes 1")
    if args.instructions:
        args.rate = min(args.rate, 5000)
    budget = 3600
    for relay in args.relays.split(","):
        with tempfile.TemporaryDirectory(prefix=f"lb-profile-{relay}-") as tmp:
            workdir = Path(tmp)
            echo_port = free_udp_port()
            uas = sipp("echo_uas.xml", "-p", str(echo_port), "-timeout", f"{budget}s")
            with (
                started(uas, workdir / "uas.log"),
                relay_running(relay, workdir, echo_port, args) as (pid, port),
            ):
                if args.instructions:
                    instructions_per_pair(relay, pid, port, args, workdir)
                else:
                    cpu_per_pair(relay, pid, port, args, workdir)
            args.perf_record = args.strace = None  # the first relay's only


if __name__ == "__main__":
    main()
