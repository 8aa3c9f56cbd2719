"""Metrics without processes: snapshots written and summed across workers (a stale one's
gauges left out, its totals kept), a restarted worker counting on, and the exposition
text parsed back with prometheus_client's own parser."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipfleet.config import Config, config_from_dict
from sipfleet.mgmt import snapshots
from sipfleet.mgmt.metrics import (
    STALE_AFTER_S,
    MetricSources,
    Publisher,
    aggregate,
    render,
    snapshot_dir,
    start_publishing,
)
from sipfleet.mgmt.snapshots import Samples
from sipfleet.stats import Histogram

BOUNDS = (0.001, 0.01)


def config(tmp_path: Path, metrics: bool = True) -> Config:
    return config_from_dict(
        {
            "node": {"name": "sip-a", "data_dir": str(tmp_path)},
            "lb": {"listen": ["udp:127.0.0.1:5060"]},
            "mgmt": {"metrics": metrics},
        }
    )


def worker_samples(invites: int, transactions: int, up: int, fast: int, slow: int) -> Samples:
    histogram = Histogram(BOUNDS)
    for _ in range(fast):
        histogram.observe(0.0005)
    for _ in range(slow):
        histogram.observe(0.5)
    return {
        "sipfleet_sip_requests_total": {("INVITE",): invites, ("other",): 1},
        "sipfleet_transactions": {(): transactions},
        "sipfleet_lb_target_up": {("proxy", "sip:10.0.0.2:5080"): up},
        "sipfleet_sip_handling_seconds": {(): histogram.snapshot()},
    }


def write(directory: Path, worker: int, samples: Samples, age: float = 0.0) -> None:
    snapshots.write(directory / f"{worker}.json", samples, time.time() - age)


def families(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name of each sample -> its labels (sorted) -> value."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


def test_two_workers_are_summed_and_the_text_parses_back(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    directory = snapshot_dir(cfg, "lb")
    assert directory == tmp_path / "run" / "metrics" / "lb-udp-127.0.0.1-5060"
    write(directory, 0, worker_samples(3, 10, up=1, fast=2, slow=0))
    write(directory, 1, worker_samples(4, 5, up=0, fast=1, slow=1))
    body, content_type = render(cfg, "lb")
    assert content_type.startswith("text/plain; version=0.0.4")
    found = families(body)
    role = (("role", "lb"),)
    assert found["sipfleet_sip_requests_total"][(("method", "INVITE"), *role)] == 7
    assert found["sipfleet_sip_requests_total"][(("method", "other"), *role)] == 2
    assert found["sipfleet_transactions"][role] == 15  # summed
    target = (("pool", "proxy"), *role, ("target", "sip:10.0.0.2:5080"))
    assert found["sipfleet_lb_target_up"][target] == 0  # up only if every worker says so
    buckets = found["sipfleet_sip_handling_seconds_bucket"]
    assert [buckets[(("le", le), *role)] for le in ("0.001", "0.01", "+Inf")] == [3, 3, 4]
    assert found["sipfleet_sip_handling_seconds_count"][role] == 4
    assert found["sipfleet_sip_handling_seconds_sum"][role] == pytest.approx(0.5015)
    info = (("node", "sip-a"), *role)
    assert [value for labels, value in found["sipfleet_info"].items() if labels[:2] == info] == [1]


def test_a_stale_worker_keeps_its_totals_but_not_its_gauges(tmp_path: Path) -> None:
    directory = snapshot_dir(config(tmp_path), "lb")
    write(directory, 0, worker_samples(3, 10, up=1, fast=1, slow=0))
    write(directory, 1, worker_samples(4, 5, up=0, fast=1, slow=0), age=STALE_AFTER_S + 1)
    totals = aggregate(snapshots.read_all(directory), time.time())
    assert totals["sipfleet_sip_requests_total"][("INVITE",)] == 7  # a counter never drops
    assert totals["sipfleet_transactions"] == {(): 10}  # the dead worker holds nothing
    assert totals["sipfleet_lb_target_up"] == {("proxy", "sip:10.0.0.2:5080"): 1}


def test_unreadable_snapshots_are_skipped(tmp_path: Path) -> None:
    directory = snapshot_dir(config(tmp_path), "lb")
    write(directory, 0, worker_samples(3, 1, up=1, fast=0, slow=0))
    (directory / "1.json").write_text('{"time": 1, "samp')  # cut short
    (directory / "2.json").write_text(json.dumps({"time": 1, "samples": {"x": [[[], "a"]]}}))
    totals = aggregate(snapshots.read_all(directory), time.time())
    assert totals["sipfleet_sip_requests_total"][("INVITE",)] == 3


async def test_a_restarted_worker_counts_on_from_its_last_snapshot(tmp_path: Path) -> None:
    path = snapshot_dir(config(tmp_path), "lb") / "0.json"
    counted = {"n": 5, "transactions": 9}

    def read() -> Samples:
        return {
            "sipfleet_sip_requests_total": {("BYE",): counted["n"]},
            "sipfleet_transactions": {(): counted["transactions"]},
        }

    first = Publisher(path, MetricSources(read), run_slow=False)
    first.publish()
    counted.update(n=2, transactions=1)  # the new process starts from zero
    second = Publisher(path, MetricSources(read), run_slow=False)
    second.publish()
    found = snapshots.read(path)
    assert found is not None
    assert found.samples["sipfleet_sip_requests_total"] == {("BYE",): 7}
    assert found.samples["sipfleet_transactions"] == {(): 1}  # a gauge is now, not a total


async def test_with_metrics_off_nothing_is_written(tmp_path: Path) -> None:
    publisher = start_publishing(config(tmp_path, metrics=False), "lb", 0, MetricSources(dict))
    await publisher.stop()
    assert not (tmp_path / "run").exists()
    assert os.listdir(tmp_path) == []


def test_a_role_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="role: 'pbx' is not one of lb, registrar, proxy"):
        render(config(Path("/nonexistent")), "pbx")


def test_the_environment_switches_the_metrics(tmp_path: Path) -> None:
    """SIPFLEET_MGMT_METRICS: how the benchmarks turn them off in every role they start."""
    from sipfleet.config.load import ConfigError, load_config

    assert load_config(env={}).mgmt.metrics
    assert not load_config(env={"SIPFLEET_MGMT_METRICS": "false"}).mgmt.metrics
    with pytest.raises(ConfigError, match=r"mgmt\.metrics"):
        load_config(env={"SIPFLEET_MGMT_METRICS": "maybe"})


def test_the_dashboard_asks_only_for_metrics_that_exist() -> None:
    """examples/grafana: every sipfleet_* name its queries use is one a role exports."""
    import re

    from sipfleet.mgmt.metrics import FAMILIES

    dashboard = Path(__file__).parents[2] / "examples" / "grafana" / "sipfleet-dashboard.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"sipfleet_\w+", expr)}
    known = {f.name for f in FAMILIES} | {
        f"{f.name}_{suffix}" for f in FAMILIES for suffix in ("bucket", "sum", "count")
    }
    assert used
    assert used <= known, used - known
