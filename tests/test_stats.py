"""The fixed-bucket histogram of sipfleet.stats."""

from __future__ import annotations

import pytest

from sipfleet.stats import Histogram, HistogramTable


def test_an_observation_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.1, 0.5, 7.0):
        histogram.observe(seconds)
    assert histogram.counts == [2, 1, 1, 2]  # le 0.001 inclusive; the last: above every bound
    assert histogram.count == 6
    assert histogram.total == pytest.approx(7.6035)
    assert histogram.snapshot() == {
        "bounds": [0.001, 0.01, 0.1],
        "counts": [2, 1, 1, 2],
        "sum": pytest.approx(7.6035),
    }


@pytest.mark.parametrize("bounds", [(), (0.1, 0.01), (0.1, 0.1)])
def test_bounds_must_rise_strictly(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="rise strictly"):
        Histogram(bounds)


def test_a_table_makes_one_histogram_per_label_on_first_use() -> None:
    table = HistogramTable((0.01,))
    table.observe("location.save", 0.002)
    table.observe("location.save", 0.02)
    table.observe("subscriber.get", 0.001)
    assert {label: h["counts"] for label, h in table.snapshot().items()} == {
        "location.save": [1, 1],
        "subscriber.get": [1, 0],
    }
