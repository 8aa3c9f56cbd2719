"""CPU per operation, sipfleet against Kamailio, from one run of the anchor harness.

    .venv/bin/python bench/anchor_ratios.py /tmp/bench-anchor/results/results-<RUN_ID>.jsonl

The harness (``run.sh sf-vs-kam``) writes one JSON line per step: the test, the offered
rate, whether it passed, the rate achieved, retransmissions, and the CPU of each process
group in % of one core. For each pair of tests that do the same job (k3 and s3: calls;
k4_c2 and s4, k4_c1 and s4_w1: OPTIONS through the LB; k1 and s1: REGISTER), this prints
each one's maximum, the servers' CPU per operation (every group but the load generators,
``sipp_*``, and ``_others``: µs = % * 10,000 / achieved rate) at every rate both passed,
their ratio, and, for the calls, the retransmissions of each passing step: what the
issue "Under load" (#21) sets targets on. Arithmetic only, so that every session reads a
run the same way.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

PAIRS = (  # (Kamailio's test, sipfleet's test, what they do)
    ("k3_calls", "s3_calls", "calls, LB -> proxy -> UAS"),
    ("k4_lb_options_c2", "s4_lb_options", "OPTIONS through the LB, 2 processes"),
    ("k4_lb_options_c1", "s4_lb_options_w1", "OPTIONS through the LB, 1 process"),
    ("k1_reg_direct", "s1_reg_direct", "REGISTER, no auth"),
)
LOAD_GENERATORS = ("sipp_",)


@dataclass(frozen=True)
class Step:
    rate: int
    passed: bool
    achieved: float
    retransmissions: int
    cpu: dict[str, float]  # % of one core by process group

    @property
    def servers(self) -> dict[str, float]:
        return {
            group: share
            for group, share in self.cpu.items()
            if not group.startswith(LOAD_GENERATORS) and group != "_others"
        }

    def us_per_op(self, group: str | None = None) -> float:
        """The servers' CPU (or one group's) per operation, in µs."""
        share = sum(self.servers.values()) if group is None else self.servers[group]
        return share * 10_000 / self.achieved if self.achieved else float("nan")


def read_steps(path: Path) -> dict[str, list[Step]]:
    """Each test's steps in the order they ran (a step run again: its last attempt)."""
    steps: dict[str, dict[int, Step]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("summary"):  # each test's last line: its maximum, already in its steps
            continue
        step = Step(
            rate=int(row["rate"]),
            passed=bool(row["pass"]),
            achieved=float(row["achieved_rate"]),
            retransmissions=int(row["retransmissions"]),
            cpu={str(k): float(v) for k, v in row["cpu_pct_of_one_core"].items()},
        )
        steps.setdefault(row["name"], {})[step.rate] = step
    return {name: list(by_rate.values()) for name, by_rate in steps.items()}


def maximum(steps: list[Step]) -> Step | None:
    passed = [step for step in steps if step.passed]
    return max(passed, key=lambda step: step.rate) if passed else None


def pair_report(kamailio: list[Step], sipfleet: list[Step], what: str) -> list[str]:
    k_max, s_max = maximum(kamailio), maximum(sipfleet)
    lines = [f"## {what}"]
    lines.append(
        f"maximum: Kamailio {k_max.rate if k_max else 'none'}/s, "
        f"sipfleet {s_max.rate if s_max else 'none'}/s"
    )
    if k_max and s_max:
        ratio = s_max.us_per_op() / k_max.us_per_op()
        lines.append(
            f"at each one's maximum: {s_max.us_per_op():.1f} vs {k_max.us_per_op():.1f} µs "
            f"per op ({ratio:.2f}x)"
        )
    k_passed = {step.rate: step for step in kamailio if step.passed}
    lines.append("rate/s   sipfleet µs  Kamailio µs  ratio  sipfleet by group (µs)  retrans")
    for step in sipfleet:
        if not step.passed or step.rate not in k_passed:
            continue
        other = k_passed[step.rate]
        groups = ", ".join(f"{g} {step.us_per_op(g):.0f}" for g in step.servers)
        others = ", ".join(f"{g} {other.us_per_op(g):.0f}" for g in other.servers)
        lines.append(
            f"{step.rate:>6}  {step.us_per_op():>11.1f}  {other.us_per_op():>11.1f}  "
            f"{step.us_per_op() / other.us_per_op():>5.2f}  {groups} (Kamailio: {others})  "
            f"{step.retransmissions} vs {other.retransmissions}"
        )
    if s_max is not None:
        below = [s for s in sipfleet if s.passed and s.rate < 0.8 * s_max.rate]
        resent = sum(step.retransmissions for step in below)
        lines.append(
            f"sipfleet's retransmissions below 80 % of its maximum: {resent} ({len(below)} steps)"
        )
    return lines


def report(path: Path) -> str:
    steps = read_steps(path)
    out: list[str] = []
    for kamailio, sipfleet, what in PAIRS:
        if kamailio in steps and sipfleet in steps:
            out += [*pair_report(steps[kamailio], steps[sipfleet], what), ""]
    return "\n".join(out) if out else f"{path}: no pair of tests found"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the run's results-<RUN_ID>.jsonl")
    print(report(parser.parse_args().results))


if __name__ == "__main__":
    main()
