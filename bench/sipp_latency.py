"""Response-time percentiles from sipp's statistics files (``-trace_stat``).

A scenario with ``<ResponseTimeRepartition value="5, 10, 20, ..."/>`` and ``rtd`` on a
receive has sipp count each measured response time into those bins (milliseconds); the
last row of its CSV holds the counts of the whole run. This prints, per file, the bin
each percentile falls in: "p99 < 10 ms" means at least 99 % of the responses came in
under 10 ms. sipp keeps no finer record in this file; ``call_bench.py`` reads exact times
from ``-trace_rtt`` instead.

    python bench/sipp_latency.py DIR_OR_CSV [...]    # a directory: every stat.csv below it

Used for a run of another harness's sipp steps (one directory per step, named
<test>-<rate>), such as the anchor benchmark's ``$RUN/sipp``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PERCENTILES = (50.0, 99.0, 99.9)
_BIN = re.compile(r"ResponseTimeRepartition(\w+?)_(<|>=)(\d+)$")


@dataclass(frozen=True)
class Histogram:
    """One timer's counts: ``bounds[i]`` is the upper bound (ms) of ``counts[i]``; the
    last bin (``>=`` the last bound) has no upper bound (None)."""

    timer: str
    bounds: tuple[int | None, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile_bound(self, percent: float) -> int | None:
        """The upper bound of the bin where ``percent`` of the counts is reached."""
        needed = self.total * percent / 100
        seen = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            seen += count
            if seen >= needed:
                return bound
        return self.bounds[-1]


def histograms(csv_path: Path) -> list[Histogram]:
    """Every timer's bins in the file's last row (sipp separates fields with ';')."""
    lines = [line for line in csv_path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"{csv_path}: no data row")
    header, last = lines[0].split(";"), lines[-1].split(";")
    bins: dict[str, list[tuple[int | None, int]]] = {}
    for name, value in zip(header, last, strict=False):
        match = _BIN.match(name.strip())
        if match is None:
            continue
        timer, sign, bound = match.groups()
        upper = int(bound) if sign == "<" else None
        bins.setdefault(timer, []).append((upper, int(value or 0)))
    return [
        Histogram(timer, tuple(b for b, _ in rows), tuple(c for _, c in rows))
        for timer, rows in bins.items()
    ]


def describe(name: str, histogram: Histogram) -> str:
    def bound(percent: float) -> str:
        upper = histogram.percentile_bound(percent)
        last = histogram.bounds[-2] if len(histogram.bounds) > 1 else 0
        return f"< {upper} ms" if upper is not None else f">= {last} ms"

    parts = [f"p{p:g} {bound(p)}" for p in PERCENTILES]
    return f"{name} (timer {histogram.timer}, {histogram.total} responses): " + ", ".join(parts)


def stat_files(argument: Path) -> list[Path]:
    if argument.is_dir():
        return sorted(argument.rglob("stat.csv"))
    return [argument]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="stat CSV files or directories")
    args = parser.parse_args()
    status = 0
    for argument in args.paths:
        for path in stat_files(argument):
            name = path.parent.name if path.name == "stat.csv" else path.name
            try:
                found = histograms(path)
            except (OSError, ValueError) as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                status = 1
                continue
            for histogram in found:
                if histogram.total:
                    print(describe(name, histogram))
    return status


if __name__ == "__main__":
    sys.exit(main())
