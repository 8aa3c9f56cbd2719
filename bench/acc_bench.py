"""The proxy's call record writer alone: CPU per call of the proxy process and the database.

Run from the repository root (or a worktree of another commit, with its ``src`` first on
PYTHONPATH, to compare):
    .venv/bin/python bench/acc_bench.py [--backends sqlite,mariadb] [--rate 900] [--calls 9000]

``CallAccounting`` (core/proxy/accounting.py) with its writer running, fed at ``--rate``
calls per second, in 10 ms ticks, as the proxy feeds it: each tick the answers of its
new calls and the BYEs of as many calls answered a second earlier (two records per call),
then every record written (``drain``). The INVITEs and BYEs are parsed before the
clock starts: only the records cost. CPU is the scheduler's exact runtime of this
process (all threads: SQLite writes in one) and of the database server; MariaDB runs with
its durable defaults (tests/dbservers.py). Bounded: ``--calls`` calls, at most 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.core.proxy.messages import request
from tests.core.proxy.test_accounting import PEER, result

from bench.common import cpu_of
from bench.storage_bench import backend
from sipfleet.core.proxy.accounting import CallAccounting
from sipfleet.core.proxy.actions import CallResult
from sipfleet.routing.api import CallContext, CallServices
from sipfleet.storage import open_storage

TICK_S = 0.01
CALL_S = 1.0  # from answer to BYE
MAX_S = 60.0


def call(n: int) -> tuple[CallResult, CallContext]:
    """Call ``n``'s final answer (200, that of the writer's tests) and its callee's BYE."""
    call_id = f"bench-{n}@198.51.100.7"
    invite = CallContext(request(call_id=call_id), PEER, cast(CallServices, object()))
    invite.arrived = time.time()
    answer = replace(result(200, "OK"), context=invite, call_id=call_id, callee_tag=f"b{n}")
    bye = request(
        "BYE", call_id=call_id, from_=f"<sip:bob@example.com>;tag=b{n}", to_tag="a1", cseq=2
    )
    return answer, CallContext(bye, PEER, cast(CallServices, object()))


async def feed(dsn: str, rate: int, calls: int, server: int | None) -> str:
    storage = open_storage(dsn)
    accounting = CallAccounting(storage.accounting, "bench")
    writer = asyncio.create_task(accounting.run())
    scripted = [call(n) for n in range(calls)]
    per_tick = max(1, round(rate * TICK_S))
    lag = round(CALL_S / TICK_S) * per_tick  # calls between an answer and its BYE
    db_pids = [server] if server else []
    start = time.monotonic()
    proxy_before, db_before = cpu_of([os.getpid()])[0], cpu_of(db_pids)[0]
    try:
        tick = 0
        while tick * per_tick < calls + lag and time.monotonic() - start < MAX_S:
            first = tick * per_tick
            for n in range(first, min(first + per_tick, calls)):
                accounting.result(scripted[n][0])
            for n in range(max(0, first - lag), max(0, min(first - lag + per_tick, calls))):
                accounting.bye(scripted[n][1], caller_tag="a1")
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * TICK_S - time.monotonic()))
        await asyncio.wait_for(accounting.drain(), MAX_S)
    finally:
        writer.cancel()
        await storage.close()
    seconds = time.monotonic() - start
    proxy = (cpu_of([os.getpid()])[0] - proxy_before) / calls * 1e6
    db = (cpu_of(db_pids)[0] - db_before) / calls * 1e6
    counters = accounting.counters()
    batches = getattr(accounting, "batches", None)  # (before the writer batched: none)
    grouped = f"{2 * calls / batches:5.1f}" if batches else "    -"
    return (
        f"{rate:5d} {calls:6d} {counters['records_written']:8d} {counters['records_lost']:5d}"
        f" {seconds:6.1f} {proxy:9.0f} {db:6.0f} {grouped}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,mariadb")
    parser.add_argument("--rate", type=int, default=900, help="calls per second")
    parser.add_argument("--calls", type=int, default=9000)
    args = parser.parse_args()
    print("backend   rate  calls  written  lost  wall s  proxy us  db us  records/batch")
    for name in args.backends.split(","):
        with backend(name, durable=True) as (dsn, server):
            line = asyncio.run(feed(dsn, args.rate, args.calls, server))
        print(f"{name:8s} {line}", flush=True)


if __name__ == "__main__":
    main()
