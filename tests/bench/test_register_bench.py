"""bench/register_bench.py: which rate the overload step doubles, and how the summary
reads a run whose fixed first step was not sustained."""

from __future__ import annotations

import argparse

from bench.register_bench import Step, overload_base, summary_rows


def test_twice_the_best_passing_step_else_the_fixed_one_not_sustained() -> None:
    ramp = [Step("r", 3000, passed=True), Step("r", 3800, passed=True), Step("r", 4800)]
    assert overload_base(argparse.Namespace(steps=""), ramp) is ramp[1]
    fixed = [Step("r", 3000, achieved=2784.6, fail_pct=4.27)]
    assert overload_base(argparse.Namespace(steps="3000"), fixed) is fixed[0]
    assert overload_base(argparse.Namespace(steps=""), fixed) is None  # a ramp: no maximum


def test_the_summary_says_the_fixed_step_was_not_sustained() -> None:
    steps = [
        Step("run", 3000, achieved=2784.6, fail_pct=4.27),
        Step("run-overload", 6000, achieved=2700.0, fail_pct=55.0),
        Step("run-after", 3000, passed=True, achieved=2990.0, fail_pct=0.3),
    ]
    rows = summary_rows({"run": steps})
    assert rows[0].split() == ["run", "none"]
    assert "3000/s not sustained (achieved 2785/s, 4.3% failed)" in rows[1]
    assert "goodput 2700/s (90 % of 3000/s)" in rows[2]
    assert "goodput 2990/s (100 % of 3000/s)" in rows[3]
