"""Stateless UDP relay benchmark: sipfleet's relay against the floor program, same run.

    .venv/bin/python bench/relay_bench.py                 # both relays, default ramp
    .venv/bin/python bench/relay_bench.py --relays direct,floor,sipfleet --rounds 2 --json out.json
    .venv/bin/python bench/relay_bench.py --instructions 2000 --relays floor,sipfleet,lb

For each relay (bench/relay_floor.py, bench/relay_sipfleet.py): start a sipp UAS that
answers OPTIONS with 200 (bench/sipp/echo_uas.xml), start the relay in front of it, then
ramp a sipp UAC (bench/sipp/echo_uac.xml) through the relay. A step runs ``--duration``
seconds at a fixed rate, bounded by ``-m rate*duration`` and ``-timeout``. It passes when
failed + unfinished calls are < 1 % of those created, and the success rate measured in
the window is >= 97 % of the target. The rate goes up by ``--factor`` while steps pass,
then bisects between the best pass and the first failure. CPU % (of one core) of the
relay, the UAC and the UAS comes from /proc/<pid>/stat (utime+stime) sampled over the
window; "others" is what processes not started here used meanwhile (a shared machine):
a step with others above ``--max-others`` is re-run once and flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import (  # noqa: E402 - after the path is set
    HZ,
    all_ticks,
    free_udp_port,
    measured,
    others_pct,
    ramp_rates,
    read_stats,
    score,
    sipp,
    started,
    tree_pids,
    tree_ticks,
    udp_drops,
    wait_for_quiet,
    wait_idle,
)

RELAYS = {  # name: (script, extra arguments)
    "floor": (BENCH / "relay_floor.py", []),
    "floor-socket": (BENCH / "relay_floor.py", ["--socket-send"]),  # not in the default
    "sipfleet": (BENCH / "relay_sipfleet.py", []),
    "sipfleet2": (BENCH / "relay_sipfleet.py", ["--workers", "2"]),  # not in the default
}


@dataclass
class Step:
    relay: str
    rate: int
    passed: bool
    created: int = 0
    successful: int = 0
    fail_pct: float = 100.0
    achieved: float = 0.0
    retransmissions: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    others_pct: float = 0.0
    contaminated: bool = False
    drops: dict[str, int] = field(default_factory=dict)  # datagrams the kernel dropped

    @property
    def relay_us_per_pair(self) -> float:
        """Relay CPU per request+response pair, at the achieved rate."""
        return 1e6 * self.cpu.get("relay", 0.0) / 100.0 / max(self.achieved, 1.0)


def run_step(
    args: argparse.Namespace,
    relay: str,
    relay_pid: int,
    uas: tuple[int, int],
    relay_port: int,
    rate: int,
    workdir: Path,
) -> Step:
    uas_pid, uas_port = uas
    stat_file = workdir / f"{relay}-{rate}-stat.csv"
    stat_file.unlink(missing_ok=True)
    calls = rate * args.duration
    ports = {"relay": relay_port, "uas": uas_port, "uac": free_udp_port()}
    dropped_before = udp_drops(ports)
    options = (
        f"-p {ports['uac']} -r {rate} -rp 1000 -m {calls} -l {max(200, 2 * rate)}"
        f" -timeout {args.duration + 15}s -recv_timeout 5000 -trace_stat -fd 1"
    )
    cmd = sipp("echo_uac.xml", f"127.0.0.1:{relay_port}", *options.split(), "-stf", str(stat_file))
    begin = time.time()
    with started(cmd, workdir / f"{relay}-{rate}-uac.log") as (uac, _):
        warm = min(3.0, args.duration / 4)
        time.sleep(warm)
        pids = {"relay": relay_pid, "uac": uac.pid, "uas": uas_pid}
        mine = {os.getpid(), *pids.values(), *tree_pids(relay_pid)}
        before = {name: tree_ticks(pid) for name, pid in pids.items()}
        everyone, t0 = all_ticks(), time.time()
        time.sleep(max(1.0, args.duration - 1 - warm))
        after = {name: tree_ticks(pid) for name, pid in pids.items()}
        seconds = time.time() - t0
        others = others_pct(everyone, all_ticks(), seconds, mine)
        dropped = udp_drops(ports)
        try:
            uac.wait(timeout=args.duration + 25)
        except subprocess.TimeoutExpired:
            uac.kill()
    cpu = {n: round(100.0 * (after[n] - before[n]) / HZ / seconds, 1) for n in pids}
    rows = read_stats(stat_file)
    drops = {name: dropped[name] - dropped_before[name] for name in ports}
    step = Step(relay, rate, False, cpu=cpu, others_pct=others, drops=drops)
    if rows:
        score(step, rows, (begin + warm, begin + args.duration - 0.5), calls, since=begin)
    return step


# -- ramp -------------------------------------------------------------------------------------
def ramp(args: argparse.Namespace, relay: str, workdir: Path) -> list[Step]:
    uas_port = free_udp_port()
    budget = args.max_steps * (args.duration + 30) + 60
    uas_cmd = sipp("echo_uas.xml", "-p", str(uas_port), "-timeout", f"{budget}s")
    script, extra = RELAYS.get(relay, (Path(), []))
    relay_cmd = [sys.executable, str(script), "--listen", "127.0.0.1:0", *extra]
    relay_cmd += ["--target", f"127.0.0.1:{uas_port}"]
    relay_started = (
        started(relay_cmd, workdir / f"{relay}-relay.log", ready_line=True)
        if relay in RELAYS
        else contextlib.nullcontext((None, uas_port))  # "direct": the harness ceiling
    )
    with started(uas_cmd, workdir / f"{relay}-uas.log") as (uas, _), relay_started as (proc, port):
        time.sleep(0.5)
        relay_pid = proc.pid if proc is not None else 0

        def step_at(rate: int) -> Step:
            uas_of = (uas.pid, uas_port)
            return measured_step(args, relay, relay_pid, uas_of, port, rate, workdir)

        steps = ramp_rates(args, step_at)
    return steps


def measured_step(
    args: argparse.Namespace,
    relay: str,
    relay_pid: int,
    uas: tuple[int, int],
    port: int,
    rate: int,
    workdir: Path,
) -> Step:
    mine = {os.getpid(), uas[0], *tree_pids(relay_pid)}

    def settle() -> None:
        wait_for_quiet(args, mine)
        drain(relay_pid)

    def run() -> Step:
        return run_step(args, relay, relay_pid, uas, port, rate, workdir)

    return measured(args, settle, run, report, pause=2)


def drain(pid: int, max_wait: float = 30.0) -> None:
    """Wait until the relay is idle, so a backlog of a failed step does not spill over."""
    wait_idle(lambda: tree_ticks(pid), max_wait)


def report(step: Step) -> None:
    print(
        f"[{step.relay:8}] rate {step.rate:6} pass={step.passed!s:5} achieved {step.achieved:8.1f}"
        f"  fail {step.fail_pct:6.2f}%  retrans {step.retransmissions:5}"
        f"  cpu relay {step.cpu.get('relay', 0):5.1f}% uac {step.cpu.get('uac', 0):5.1f}%"
        f" uas {step.cpu.get('uas', 0):5.1f}%  others {step.others_pct:5.1f}%"
        f"  drops {','.join(f'{k}:{v}' for k, v in step.drops.items() if v) or '-'}"
        f"{'  CONTAMINATED' if step.contaminated else ''}",
        file=sys.stderr,
        flush=True,
    )


def summary(results: dict[str, list[Step]]) -> str:
    lines = [
        "",
        "relay         max rate/s  relay CPU %  relay µs/pair  uac+uas CPU %  first fail/s",
        "------------  ----------  -----------  -------------  -------------  ------------",
    ]
    best: dict[str, Step | None] = {}
    for relay, steps in results.items():
        passed = [s for s in steps if s.passed]
        failed = [s.rate for s in steps if not s.passed]
        top = max(passed, key=lambda s: s.rate) if passed else None
        best[relay] = top
        first_fail = min((r for r in failed if top is None or r > top.rate), default=None)
        if top is None:
            lines.append(f"{relay:12}  {'none':>10}")
            continue
        lines.append(
            f"{relay:12}  {top.rate:10}  {top.cpu['relay']:11.1f}  "
            f"{top.relay_us_per_pair:13.1f}  {top.cpu['uac'] + top.cpu['uas']:13.1f}  "
            f"{first_fail if first_fail is not None else '-':>12}"
        )
    ours = best.get("sipfleet")
    for name in ("floor", "floor-socket"):
        floor = best.get(name)
        if floor is not None and ours is not None:
            lines.append(
                f"\nsipfleet / {name}: rate {ours.rate / floor.rate:.2f}, "
                f"CPU per pair {ours.relay_us_per_pair / floor.relay_us_per_pair:.2f}x"
            )
    return "\n".join(lines)


# -- in-process cost ------------------------------------------------------------------------
SIPP_OPTIONS = (
    "OPTIONS sip:echo@127.0.0.1:5091 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-1234-1-0\r\nMax-Forwards: 70\r\n"
    "From: <sip:sipp@127.0.0.1:5100>;tag=1234SIPpTag001\r\nTo: <sip:echo@127.0.0.1:5091>\r\n"
    "Call-ID: 1-1234@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContact: <sip:sipp@127.0.0.1:5100>\r\n"
    "Accept: application/sdp\r\nUser-Agent: sf-bench\r\nContent-Length: 0\r\n\r\n"
)


def in_process(pairs: int | None = None, relay: str = "sipfleet") -> None:
    """µs per OPTIONS + 200 pair inside one process, no sipp: the whole relay path from
    the datagram callback to a real sendto, the SIP-core steps it is made of, and the
    LB's path (the real Balancer and Router in front of the same forwarder).

    With ``pairs``: only run that many pairs through ``relay`` (floor, sipfleet, lb), for
    a count of instructions (``instructions``)."""
    import timeit

    import uvloop

    from sipfleet.config.listen import ListenAddress
    from sipfleet.core.endpoint import SipEndpoint
    from sipfleet.core.stateless import StatelessForwarder, StatelessRelay
    from sipfleet.sip import Request, parse_message
    from sipfleet.sip.builders import stateless_branch
    from sipfleet.transport import Destination

    sys.path.insert(0, str(BENCH))
    from relay_floor import FloorRelay  # type: ignore[import-not-found]

    def best(run: Callable[[], object], number: int = 2000) -> float:
        return min(timeit.repeat(run, number=number, repeat=9)) / number * 1e6

    async def measure() -> None:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        port = sink.getsockname()[1]
        source = ("127.0.0.1", port)

        def drain() -> None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    sink.recv(65536)

        def exchange(
            deliver: Callable[[bytes, Any], None], request: bytes
        ) -> tuple[Callable[[], None], bytes]:
            """A pair through ``deliver`` (a datagram callback), and the response used."""
            response = relay_response(deliver, request, sink)

            def pair() -> None:
                deliver(request, source)
                deliver(response, source)
                drain()

            pair()
            return pair, response

        endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
        endpoint.handler = StatelessRelay(StatelessForwarder(endpoint), Destination("udp", *source))
        await endpoint.start()
        request = SIPP_OPTIONS.format(port=port).encode()
        relay_pair, response = exchange(endpoint.udp._listeners[0].datagram_received, request)

        floor = FloorRelay(source, "127.0.0.1", 5062)
        floor_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        floor_socket.bind(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: floor, sock=floor_socket)
        floor_pair, _ = exchange(floor.datagram_received, request)

        lb = lb_endpoint(port)
        await lb.start()
        to_lb = f"sip:echo@{lb.sent_by('udp')}".encode()
        lb_pair, _ = exchange(
            lb.udp._listeners[0].datagram_received,
            request.replace(b"sip:echo@127.0.0.1:5091", to_lb),
        )

        if pairs is not None:
            run = {"floor": floor_pair, "sipfleet": relay_pair, "lb": lb_pair}[relay]
            for _ in range(pairs):
                run()
            return

        def request_steps() -> bytes:  # what StatelessForwarder.forward_request does
            message = cast(Request, parse_message(request))
            message.max_forwards  # noqa: B018
            via = message.top_via
            branch = stateless_branch(message, "udp:127.0.0.1:5091")
            via.rport  # noqa: B018
            message.decrement_max_forwards()
            message.push_via(f"SIP/2.0/UDP 127.0.0.1:5062;branch={branch}")
            return message.serialize()

        def response_steps() -> bytes:  # what StatelessForwarder.forward_response does
            message = parse_message(response)
            message.first_value("via")
            message.pop_first_value("via")
            message.top_via.response_address()
            return message.serialize()

        figures = {
            "floor relay path, request + response (2 sendto)": best(floor_pair),
            "sipfleet relay path, request + response (endpoint, forwarder, 2 sendto)": best(
                relay_pair
            ),
            "  SIP core only: request (parse, Max-Forwards, top Via, branch, edits, serialize)": (
                best(request_steps)
            ),
            "  SIP core only: response (parse, our Via, pop, next Via, serialize)": best(
                response_steps
            ),
            "  parse_message(request)": best(lambda: parse_message(request)),
            "  parse_message(response)": best(lambda: parse_message(response)),
            "LB worker path, request + response (Balancer, Router by Call-ID, forwarder)": best(
                lb_pair
            ),
        }
        await endpoint.close()
        await lb.close()
        floor.transport.close()
        sink.close()
        for name, value in figures.items():
            print(f"{value:7.2f} µs  {name}")

    uvloop.run(measure())


def instructions(relays: list[str], pairs: int) -> None:
    """User-space instructions per request + response pair of each relay's in-process
    path, counted by valgrind's callgrind (the same on any machine, unlike a rate): a run
    of ``pairs`` pairs minus a run of none, so start-up is not counted."""
    for relay in relays:
        counts = [callgrind_total(relay, n) for n in (0, pairs)]
        per_pair = (counts[1] - counts[0]) / pairs
        print(f"{relay:9} {per_pair / 1000:7.1f}k instructions per pair", flush=True)


def callgrind_total(relay: str, pairs: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, __file__, "--in-process", "--pairs", str(pairs)]
    command += ["--relays", relay]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind: {done.stderr[-500:]}")
    return int(found[1])


def relay_response(
    deliver: Callable[[bytes, Any], None], request: bytes, sink: socket.socket
) -> bytes:
    """The 200 that sipp's UAS sends for ``request`` relayed through ``deliver`` to the
    sink: both Vias on one line, as sipp writes them."""
    deliver(request, sink.getsockname())
    _, _, rest = sink.recv(65536).partition(b"\r\n")
    ours, theirs, *others = rest.split(b"\r\n")
    return b"\r\n".join([b"SIP/2.0 200 OK", b"Via: " + ours[5:] + b", " + theirs[5:], *others])


def lb_endpoint(proxy_port: int) -> Any:
    """One LB worker as `sipfleet run lb` makes it (LbEndpoint, Router, Balancer), with a
    single proxy-pool target at 127.0.0.1:``proxy_port``, no keepalives."""
    import time

    from sipfleet.config.listen import ListenAddress
    from sipfleet.core.lb.balancer import Balancer
    from sipfleet.core.lb.endpoint import LbEndpoint
    from sipfleet.core.lb.pinger import Keepalives
    from sipfleet.core.lb.pools import Pools
    from sipfleet.core.lb.probes import HealthChecker
    from sipfleet.core.lb.router import Router
    from sipfleet.core.lb.sides import Sides
    from sipfleet.core.stateless import StatelessForwarder
    from sipfleet.sip.flow import FlowTokens
    from sipfleet.storage.model import LbTarget
    from sipfleet.transport.sockets import bind_all, listen_address_of

    loopback = ListenAddress("udp", "127.0.0.1", 0)
    listen, control = bind_all([loopback, loopback])
    sides = Sides([listen_address_of(listen)])
    control_at = listen_address_of(control)
    pools = Pools(probe_interval=1.0)
    pools.update([LbTarget(1, "proxy", f"sip:127.0.0.1:{proxy_port}", 1, "active")])
    endpoint = LbEndpoint(
        sides.listen,
        sockets=[listen, control],
        control=(control_at.host, control_at.port),
        siblings={0: (control_at.host, control_at.port)},
    )
    tokens = FlowTokens(b"bench")
    router = Router(sides, tokens, pools, lb_id=1, worker=0, has_connection=endpoint.has_connection)
    health = HealthChecker(endpoint, pools, sides, time.monotonic)
    keepalives = Keepalives(
        endpoint, sides, tokens, lb_id=1, workers=1, interval=30.0, method="options",
        enabled=False, now=time.monotonic,
    )  # fmt: skip
    forwarder = StatelessForwarder(endpoint)
    endpoint.handler = Balancer(endpoint, router, forwarder, health, keepalives, tokens)
    return endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--relays",
        default="floor,sipfleet",
        help="comma list of floor, floor-socket (sends on the socket), sipfleet, sipfleet2 and "
        "direct (sipp UAC straight to the UAS: "
        "the harness ceiling)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per step")
    parser.add_argument("--start", type=int, default=8000, help="first rate (calls/s)")
    parser.add_argument("--factor", type=float, default=1.25)
    parser.add_argument("--bisect", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=10, help="per relay and round")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the whole comparison (noisy machines)"
    )
    parser.add_argument(
        "--max-others", type=float, default=15.0, help="%% of a core others may use during a step"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait at most for others to go quiet",
    )
    parser.add_argument("--json", type=Path, help="write every step here")
    parser.add_argument(
        "--in-process", action="store_true", help="only the in-process cost per pair, no sipp"
    )
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="PAIRS",
        help="instructions per pair of each relay (floor, sipfleet, lb) by valgrind callgrind",
    )
    parser.add_argument("--pairs", type=int, help=argparse.SUPPRESS)  # one callgrind run
    args = parser.parse_args()
    in_process_paths = {"floor", "sipfleet", "lb"}
    if (args.instructions or args.pairs is not None) and not set(
        args.relays.split(",")
    ) <= in_process_paths:
        parser.error(f"--relays: counting instructions takes {', '.join(sorted(in_process_paths))}")
    if args.pairs is not None and "," in args.relays:
        parser.error("--pairs runs one relay: give --relays one name")
    if args.instructions:
        instructions(args.relays.split(","), args.instructions)
        return
    if args.in_process:
        in_process(args.pairs, args.relays)
        return
    rounds: list[dict[str, list[Step]]] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        for number in range(1, args.rounds + 1):
            results = {relay: ramp(args, relay, Path(tmp)) for relay in args.relays.split(",")}
            rounds.append(results)
            print(f"\nround {number}:{summary(results)}", flush=True)
    if args.json:
        dump = [{r: [asdict(s) for s in steps] for r, steps in res.items()} for res in rounds]
        args.json.write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
