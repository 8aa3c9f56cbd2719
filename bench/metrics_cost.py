"""What the metrics cost a proxy besides the per-message counting (docs/benchmarks.md,
"The cost of metrics"): the storage timing wrapper per operation, and one snapshot.

    .venv/bin/python bench/metrics_cost.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipfleet.mgmt.metrics import MetricSources, Publisher
from sipfleet.mgmt.snapshots import Samples
from sipfleet.stats import DATABASE_BUCKETS, RELAY_BUCKETS, Histogram, HistogramTable
from sipfleet.storage.timing import timed

AWAITS = 200_000
SNAPSHOTS = 2_000
METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY")
KINDS = ("location.lookup", "acc.answered", "acc.ended", "lb_target.list_all", "lcr.version")


async def operation() -> int:
    return 1


async def per_await(work: Callable[[], Awaitable[int]]) -> float:
    started = time.perf_counter()
    for _ in range(AWAITS):
        await work()
    return (time.perf_counter() - started) / AWAITS


def proxy_like() -> Samples:
    """A proxy's snapshot: every method, class and statement kind it reports."""
    table = HistogramTable(DATABASE_BUCKETS)
    for kind in KINDS:
        table.observe(kind, 0.001)
    classes = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx")
    return {
        "sipfleet_sip_requests_total": {(method,): 5 for method in (*METHODS, "other")},
        "sipfleet_sip_responses_total": {
            (direction, name): 3 for direction in ("received", "sent") for name in classes
        },
        "sipfleet_sip_handling_seconds": {(): Histogram(RELAY_BUCKETS).snapshot()},
        "sipfleet_db_statement_duration_seconds": {(k,): v for k, v in table.snapshot().items()},
        "sipfleet_transactions": {(): 100},
        "sipfleet_calls_active": {(): 10},
    }


async def main() -> None:
    wrapped = timed("location.lookup")(operation)
    bare = min([await per_await(operation) for _ in range(3)])
    with_timing = min([await per_await(wrapped) for _ in range(3)])
    print(f"storage timing wrapper: {(with_timing - bare) * 1e6:.2f} us per operation")
    samples = proxy_like()
    with tempfile.TemporaryDirectory() as directory:
        publisher = Publisher(
            Path(directory) / "0.json", MetricSources(lambda: samples), run_slow=False
        )
        started = time.process_time()
        for _ in range(SNAPSHOTS):
            publisher.publish()
        spent = (time.process_time() - started) / SNAPSHOTS
    print(f"one snapshot (read, add, JSON, write, rename): {spent * 1e6:.0f} us of CPU")


if __name__ == "__main__":
    asyncio.run(main())
