"""bench/anchor_ratios.py: CPU per operation and its ratio from the harness's results."""

from __future__ import annotations

import json
from pathlib import Path

from bench.anchor_ratios import read_steps, report


def step(name: str, rate: int, achieved: float, cpu: dict[str, float], **more: object) -> str:
    row = {
        "name": name,
        "rate": rate,
        "pass": more.get("passed", True),
        "achieved_rate": achieved,
        "retransmissions": more.get("retransmissions", 0),
        "cpu_pct_of_one_core": cpu,
    }
    return json.dumps(row)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_servers_cpu_per_call_and_the_ratio_at_each_rate_both_passed(tmp_path: Path) -> None:
    results = write(
        tmp_path / "results.jsonl",
        [
            step("k3_calls", 1000, 1000.0, {"kam_lb": 10.0, "kam_proxy": 20.0, "sipp_uac": 9.0}),
            step("k3_calls", 1200, 900.0, {"kam_lb": 30.0, "kam_proxy": 40.0}, passed=False),
            json.dumps({"name": "k3_calls", "summary": True, "max_pass_rate": 1000}),
            step(
                "s3_calls",
                1000,
                1000.0,
                {"sf_lb": 15.0, "sf_proxy": 30.0, "sipp_uas": 12.0, "_others": 2.0},
                retransmissions=3,
            ),
            step("s3_calls", 1200, 1200.0, {"sf_lb": 18.0, "sf_proxy": 36.0}),
            step("s3_calls", 1500, 1500.0, {"sf_lb": 22.5, "sf_proxy": 45.0}, retransmissions=7),
        ],
    )
    text = report(results)
    # 30 % of a core over 1,000 calls/s: 300 µs a call (the load generators left out)
    assert "  1000        450.0        300.0   1.50  sf_lb 150, sf_proxy 300" in text
    assert "maximum: Kamailio 1000/s, sipfleet 1500/s" in text
    assert "1200 " not in text.split("retrans\n")[1].split("sipfleet's")[0]  # k3 failed it
    # below 1,200/s (80 % of 1,500): the 1,000/s step alone
    assert "below 80 % of its maximum: 3 (1 steps)" in text


def test_a_step_run_again_counts_by_its_last_attempt(tmp_path: Path) -> None:
    results = write(
        tmp_path / "results.jsonl",
        [
            step("s4_lb_options", 15000, 9000.0, {"sf_lb": 90.0}, passed=False),
            step("s4_lb_options", 15000, 15000.0, {"sf_lb": 30.0}),
        ],
    )
    (only,) = read_steps(results)["s4_lb_options"]
    assert only.passed
    assert only.us_per_op() == 20.0
    assert report(results).endswith("no pair of tests found")
