"""bench/sipp_latency.py: percentiles from the bins of sipp's statistics file."""

from __future__ import annotations

from pathlib import Path

from bench.sipp_latency import histograms, stat_files

HEADER = (
    "StartTime;SuccessfulCall(C);ResponseTimeRepartition1;ResponseTimeRepartition1_<5;"
    "ResponseTimeRepartition1_<10;ResponseTimeRepartition1_<20;"
    "ResponseTimeRepartition1_>=20;CallLength\n"
)


def write_stat(directory: Path, rows: list[str]) -> Path:
    directory.mkdir(parents=True)
    path = directory / "stat.csv"
    path.write_text(HEADER + "".join(f"x;0;;{row};0\n" for row in rows))
    return path


def test_the_last_row_counts_and_each_percentile_names_its_bin(tmp_path: Path) -> None:
    # 1,000 responses: 980 under 5 ms, 15 under 10, 4 under 20, 1 slower
    path = write_stat(tmp_path / "s3_calls-1200", ["10;0;0;0", "980;15;4;1"])
    (histogram,) = histograms(path)
    assert histogram.total == 1000
    assert histogram.percentile_bound(50) == 5
    assert histogram.percentile_bound(99) == 10  # 980 < 990 <= 995
    assert histogram.percentile_bound(99.9) == 20  # the 999th
    assert histogram.percentile_bound(100) is None  # the 1,000th is past the last bound


def test_a_directory_is_searched_for_every_step(tmp_path: Path) -> None:
    write_stat(tmp_path / "k3_calls-600", ["5;0;0;0"])
    write_stat(tmp_path / "k3_calls-1200", ["5;0;0;0"])
    assert [p.parent.name for p in stat_files(tmp_path)] == ["k3_calls-1200", "k3_calls-600"]
