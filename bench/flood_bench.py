"""The proxy's memory under a flood of stray requests: RSS against [sip] max_transactions.

    .venv/bin/python bench/flood_bench.py                          # 3,000/s for 60 s, default cap
    .venv/bin/python bench/flood_bench.py --rate 3000 --seconds 60 --cap 20000
    .venv/bin/python bench/flood_bench.py --kinds bye              # stray BYEs only

Starts ``sipfleet run proxy`` as the embedded default would run it (SQLite, every
domain served, callers authenticated), then sends BYEs for dialogs that do not exist
and INVITEs for users that do not exist, each a new transaction, at ``--rate`` per
second for ``--seconds`` (bounded), and prints once a second the proxy's RSS and what
the answers were: 407 (kept for Timer J/H: 32 s), 503 (the cap reached: nothing kept).
Then it waits ``--after`` seconds, the kept transactions leave, and prints the RSS again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests.integration.flood import flood, rss_bytes  # noqa: E402

from bench.call_bench import start_role  # noqa: E402
from bench.common import free_udp_port, stop  # noqa: E402
from sipfleet.storage.dsn import Dsn  # noqa: E402 - after the path is set
from sipfleet.storage.migrate import upgrade  # noqa: E402

MB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=3000, help="requests per second")
    parser.add_argument("--seconds", type=int, default=60, help="flood duration (<= 300)")
    parser.add_argument("--cap", type=int, default=0, help="[sip] max_transactions (0: default)")
    parser.add_argument("--kinds", default="bye,invite", help="bye, invite or both")
    parser.add_argument("--after", type=int, default=40, help="seconds to watch afterwards")
    args = parser.parse_args()
    seconds = min(args.seconds, 300)
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as temp:
        workdir = Path(temp)
        dsn = f"sqlite:///{workdir / 'sipfleet.db'}"
        asyncio.run(upgrade(Dsn.parse(dsn)))
        port = free_udp_port()
        cap = f"max_transactions = {args.cap}\n" if args.cap else ""
        text = (
            f'[node]\nname = "flood"\ndata_dir = "{workdir}"\ncluster_secret = "bench"\n\n'
            f'[database]\nwrite = "{dsn}"\n\n[sip]\n{cap}\n'
            f'[proxy]\nlisten = ["udp:127.0.0.1:{port}"]\n'
        )
        proxy = start_role("proxy", text, workdir, "proxy")
        try:
            time.sleep(1.0)
            base = rss_bytes(proxy.pid)
            print(f"proxy RSS at start: {base / MB:.0f} MB; {args.rate}/s for {seconds} s")
            totals: Counter[int] = Counter()
            peak = base
            kinds = tuple(args.kinds.split(","))
            for second in range(seconds):
                result = flood(
                    ("127.0.0.1", port), args.rate, args.rate, kinds=kinds, linger=0.0,
                    start=second * args.rate,
                )  # fmt: skip
                totals.update(result.statuses)
                rss = rss_bytes(proxy.pid)
                peak = max(peak, rss)
                print(f"{second + 1:4d} s  RSS {rss / MB:6.0f} MB  answers {dict(result.statuses)}")
            print(
                f"peak RSS {peak / MB:.0f} MB (+{(peak - base) / MB:.0f} MB), "
                f"answers {dict(totals)}"
            )
            for waited in range(args.after):
                time.sleep(1.0)
                if waited % 10 == 9:
                    print(f"  +{waited + 1} s after: RSS {rss_bytes(proxy.pid) / MB:.0f} MB")
        finally:
            stop(proxy)
            log = (workdir / "proxy.log").read_text()
            print(log[-2000:])


if __name__ == "__main__":
    main()
