"""What the bench scripts share: ports, CPU from /proc, sipp's statistics, waiting for a
quiet machine and idle servers, stopping processes, and the ramp of rates.

Imported as ``bench.common``: a script puts the repository root on ``sys.path`` first
(``sys.path.insert(0, str(ROOT))``), so ``python bench/x.py`` works from the root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared"  # the folder next to the checkout (the anchor's runner)
HZ = os.sysconf("SC_CLK_TCK")
# sipp's options in every run: loopback, no keyboard, 4 MB socket buffers, and enough
# receive loops per turn that a high rate is not limited by sipp's own polling.
SIPP_COMMON = ("-i", "127.0.0.1", "-nostdin", "-buff_size", "4194304", "-max_recv_loops", "10000")


# -- ports and processes ---------------------------------------------------------------------
def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def started(
    cmd: list[str], out: Path, ready_line: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``cmd``; with ``ready_line`` wait for "READY <port>" on its stdout."""
    log = out.open("wb")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if ready_line else log, stderr=log
    )
    port = 0
    try:
        if ready_line:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10.0)
            line = proc.stdout.readline().decode() if ready else ""
            if not line.startswith("READY "):
                raise RuntimeError(f"{cmd[1]} did not start: {line!r}, see {out}")
            port = int(line.split()[1])
        yield proc, port
    finally:
        stop(proc, timeout=5)
        log.close()


def udp_drops(ports: dict[str, int]) -> dict[str, int]:
    """Datagrams dropped by the kernel (receive buffer full) per named local UDP port."""
    wanted = {port: name for name, port in ports.items()}
    drops = dict.fromkeys(ports, 0)
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].split(":")[1], 16)
        if port in wanted:
            drops[wanted[port]] += int(fields[-1])
    return drops


# -- CPU from /proc ----------------------------------------------------------------------------
def stat_fields(text: str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name, which may hold spaces and
    parentheses itself: ``fields[1]`` is the parent, ``[11]``/``[12]`` utime/stime."""
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pid: int) -> int:
    """utime+stime of ``pid`` in clock ticks; 0 for pid 0 or a process that is gone."""
    if pid == 0:
        return 0
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat_fields(text)
    return int(fields[11]) + int(fields[12])


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (a relay's worker processes)."""
    if pid == 0:
        return []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *(p for kid in kids for p in tree_pids(int(kid)))]


def tree_ticks(pid: int) -> int:
    return sum(cpu_ticks(p) for p in tree_pids(pid))


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, found from every process's parent in /proc (the LB's
    workers; also children that a thread other than the main one started)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int(stat_fields((entry / "stat").read_text())[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_split(pid: int) -> tuple[float, float]:
    """(CPU, system part) of a process in seconds, all its threads.

    CPU is the scheduler's exact runtime (``/proc/<pid>/task/*/schedstat``) rather than
    the tick-sampled utime + stime the anchor reads (checked: within 1 % of each other
    at 1,750 calls/s); the system part is stime's share of the ticks, applied to it."""
    runtime = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            runtime += int((task / "schedstat").read_text().split()[0])
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return runtime / 1e9, 0.0
    user, system = int(fields[11]), int(fields[12])
    share = system / (user + system) if user + system else 0.0
    return runtime / 1e9, runtime / 1e9 * share


def cpu_of(pids: list[int]) -> tuple[float, float]:
    splits = [cpu_split(pid) for pid in pids]
    return sum(total for total, _ in splits), sum(system for _, system in splits)


class CpuWindow(NamedTuple):
    """CPU (cpu_of) of named groups of processes over the steady part of a step."""

    warm: float  # seconds from the start of the step to the first sample
    before: dict[str, tuple[float, float]]
    after: dict[str, tuple[float, float]]
    seconds: float  # between the samples

    def pct(self, name: str) -> float:
        """Group ``name``'s CPU in the window, % of one core."""
        return (self.after[name][0] - self.before[name][0]) / self.seconds * 100


def sample_cpu(groups: dict[str, list[int]], duration: int) -> CpuWindow:
    """Sleeps through a step of ``duration`` seconds that has just started: a warm-up (a
    quarter, 3 s at most) unmeasured, then CPU of each group until 1 s before the end."""
    warm = min(3.0, duration / 4)
    time.sleep(warm)
    before = {name: cpu_of(pids) for name, pids in groups.items()}
    t0 = time.time()
    time.sleep(max(1.0, duration - 1 - warm))
    after = {name: cpu_of(pids) for name, pids in groups.items()}
    return CpuWindow(warm, before, after, time.time() - t0)


# (pid, start time) -> (name, utime+stime): the start time tells a reused pid apart.
Ticks = dict[tuple[int, str], tuple[str, int]]


def all_ticks() -> Ticks:
    """Name and utime+stime of every process, keyed by (pid, start time) against pid reuse."""
    ticks: Ticks = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = stat_fields(text)
            ticks[(int(entry), fields[19])] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def others_pct(before: Ticks, after: Ticks, seconds: float, mine: set[int]) -> float:
    """% of one core used by processes not in ``mine`` that ran at both samples."""
    used = sum(
        ticks - before[key][1]
        for key, (_, ticks) in after.items()
        if key in before and key[0] not in mine
    )
    return round(100.0 * used / HZ / seconds, 1)


def wait_ready_file(
    process: subprocess.Popen[bytes], ready: Path, log: Path, timeout: float = 30.0
) -> None:
    """Until a role started with ``--ready-file ready`` has written it."""
    deadline = time.time() + timeout
    while not ready.exists():
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{ready.stem} did not start, see {log}")
        time.sleep(0.1)


def wait_for_quiet(
    args: argparse.Namespace,
    mine: set[int],
    busy_pct: Callable[[Ticks, Ticks, float, set[int]], float] = others_pct,
) -> None:
    """Let other work on the machine settle (bounded by ``args.quiet_wait``) before a step."""
    deadline = time.time() + args.quiet_wait
    while True:
        before, t0 = all_ticks(), time.time()
        time.sleep(1.0)
        busy = busy_pct(before, all_ticks(), time.time() - t0, mine)
        if busy <= args.max_others or time.time() > deadline:
            return
        print(f"  others use {busy:.0f}% of a core, waiting", file=sys.stderr, flush=True)


def wait_idle(ticks: Callable[[], int], max_wait: float = 30.0) -> None:
    """Until ``ticks`` (the servers under test) grow by < 5 % of a core: a backlog of a
    failed step must not spill over into the next."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        before = ticks()
        time.sleep(0.5)
        if (ticks() - before) / HZ / 0.5 < 0.05:
            return


class SharedStep(Protocol):
    """A step measured on a machine others use too."""

    others_pct: float  # % of one core that processes not ours used during it
    contaminated: bool


SharedT = TypeVar("SharedT", bound=SharedStep)


def measured(
    args: argparse.Namespace,
    settle: Callable[[], None],
    run: Callable[[], SharedT],
    report: Callable[[SharedT], None],
    pause: float = 0.0,
) -> SharedT:
    """``settle()`` then ``run()`` a step, reported; once more (after ``pause`` seconds)
    when others used more than ``args.max_others`` % of a core during it, which flags it
    contaminated. The last run."""
    step: SharedT | None = None
    for _ in range(2):
        settle()
        step = run()
        step.contaminated = step.others_pct > args.max_others
        report(step)
        if not step.contaminated:
            break
        if pause:
            time.sleep(pause)
    assert step is not None
    return step


# -- sipp --------------------------------------------------------------------------------------
def sipp(scenario: str, *args: str) -> list[str]:
    """sipp running bench/sipp/``scenario``, with 4 MB socket buffers. Always give ``-p``:
    sipp's default local port (and ``-p 0``) is 5060, which may belong to someone else on
    this machine."""
    return ["sipp", "-sf", str(BENCH / "sipp" / scenario), *SIPP_COMMON, *args]


def read_stats(path: Path) -> list[dict[str, str]]:
    """The rows of a sipp ``-stf`` file as {column: value}; [] when it is missing."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []
    header = lines[0].rstrip(";").split(";") if lines else []
    return [dict(zip(header, line.rstrip(";").split(";"), strict=False)) for line in lines[1:]]


def epoch(row: dict[str, str]) -> float:
    """When sipp wrote the row (its CurrentTime column ends in the epoch time)."""
    return float(row["CurrentTime"].split("\t")[-1])


def window_rate(rows: list[dict[str, str]], start: float, end: float) -> float | None:
    """Successful calls per second between the first and last row written in [start,
    end]; None with fewer than two rows there."""
    window = [row for row in rows if start <= epoch(row) <= end]
    if len(window) < 2:
        return None
    done = int(window[-1]["SuccessfulCall(C)"]) - int(window[0]["SuccessfulCall(C)"])
    return done / (epoch(window[-1]) - epoch(window[0]))


class SippStep(Protocol):
    """A step of one sipp UAC at a fixed rate (relay_bench's and register_bench's Step)."""

    rate: int
    passed: bool
    created: int
    successful: int
    retransmissions: int
    fail_pct: float
    achieved: float


def sustained(rate: int, created: int, successful: int, achieved: float) -> bool:
    """The verdict of a step: < 1 % of what was created failed or did not finish, and at
    least 97 % of the target ``rate`` was achieved."""
    return created > 0 and (created - successful) / created < 0.01 and achieved >= 0.97 * rate


def score(
    step: SippStep,
    rows: list[dict[str, str]],
    window: tuple[float, float],
    calls: int,
    since: float | None = None,
) -> None:
    """Fill ``step`` from sipp's ``rows`` (not empty): the totals, the rate achieved in
    ``window`` (or, with ``since``, over all the time since then when the window has too
    few rows), and the verdict: < 1 % failed or unfinished, >= 97 % of the rate achieved,
    >= 99 % of the ``calls`` created."""
    last = rows[-1]
    step.created = int(last["OutgoingCall(C)"])
    step.successful = int(last["SuccessfulCall(C)"])
    step.retransmissions = int(last.get("Retransmissions(C)", "0") or 0)
    step.fail_pct = round(100.0 * (step.created - step.successful) / max(1, step.created), 3)
    achieved = window_rate(rows, *window)
    if achieved is not None:
        step.achieved = round(achieved, 1)
    elif since is not None:
        step.achieved = round(step.successful / max(1e-9, time.time() - since), 1)
    step.passed = (
        sustained(step.rate, step.created, step.successful, step.achieved)
        and step.created >= 0.99 * calls
    )


# -- the ramp of rates ---------------------------------------------------------------------------
class RampStep(Protocol):
    @property
    def rate(self) -> int: ...

    @property
    def passed(self) -> bool: ...


StepT = TypeVar("StepT", bound=RampStep)


def nice(rate: float) -> int:
    """A round rate: to 100/s from 1,000/s up, to 10/s below."""
    return int(round(rate / 100.0) * 100) if rate >= 1000 else int(round(rate / 10.0) * 10)


def ramp_rates(args: argparse.Namespace, step_at: Callable[[int], StepT]) -> list[StepT]:
    """From ``args.start``, the rate goes up by ``args.factor`` while steps pass (down
    while they fail), then bisects ``args.bisect`` times between the best pass and the
    first failure; ``args.max_steps`` steps at most. Every step made, in order."""
    steps: list[StepT] = []
    best: StepT | None = None
    worst: StepT | None = None
    rate = args.start
    while len(steps) < args.max_steps and (best is None or worst is None):
        steps.append(step_at(rate))
        if steps[-1].passed:
            best, rate = steps[-1], nice(rate * args.factor)
        else:
            worst, rate = steps[-1], nice(rate / args.factor)
    for _ in range(args.bisect):
        if best is None or worst is None or len(steps) >= args.max_steps:
            break
        middle = nice((best.rate + worst.rate) / 2)
        if not best.rate < middle < worst.rate:
            break
        steps.append(step_at(middle))
        if steps[-1].passed:
            best = steps[-1]
        else:
            worst = steps[-1]
    return steps


# -- instruction counts: callgrind on a running process, switched on and off around the load
VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]


def callgrind_control(*arguments: str) -> None:
    subprocess.run(["callgrind_control", *arguments], capture_output=True, check=True, timeout=120)


def collected(path: Path) -> int:
    """Instructions in a callgrind output file (every dump's totals)."""
    found = re.findall(r"^(?:totals|summary): (\d+)", path.read_text(errors="replace"), re.M)
    return int(found[-1]) if found else 0
