"""Plain counting for the metrics: a fixed-bucket latency histogram and a table of them
by a small fixed set of labels. No locks, no registry, no I/O: the hot path pays a
``bisect`` and two additions. ``sipfleet.mgmt.metrics`` reads ``snapshot()`` once a
second and turns it into Prometheus' form (cumulative buckets, ``+Inf``, ``_sum``)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

# Upper bounds in seconds. A relay takes ~25 µs of CPU; a database statement ~0.1-10 ms;
# a REGISTER answer waits on a round trip (and at worst the 1 s storage deadline).
RELAY_BUCKETS: Final = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
)
DATABASE_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
TRANSACTION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

HistogramSnapshot = dict[str, list[float] | list[int] | float]


class Histogram:
    """Counts of observations per bucket (``counts[i]``: bound i-1 < value <= bound i;
    the last one: above every bound) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram bounds must rise strictly: {bounds!r}")
        self.bounds = tuple(float(bound) for bound in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> HistogramSnapshot:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}


class HistogramTable:
    """One histogram per label value (a statement kind, a method), made on first use:
    the label values come from code, never from the network."""

    __slots__ = ("bounds", "by_label")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.by_label: dict[str, Histogram] = {}

    def observe(self, label: str, seconds: float) -> None:
        histogram = self.by_label.get(label)
        if histogram is None:
            histogram = self.by_label[label] = Histogram(self.bounds)
        histogram.observe(seconds)

    def snapshot(self) -> dict[str, HistogramSnapshot]:
        return {label: h.snapshot() for label, h in self.by_label.items()}
