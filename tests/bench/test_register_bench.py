"""bench/register_bench.py: which rate the overload step doubles, how the summary
reads a run whose fixed first step was not sustained, and the refusals it reads from
each role's /metrics."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from bench.register_bench import Step, overload_base, refusals, summary_rows, sustained

METRICS = b"""# HELP sipfleet_overload_rejected_total New requests answered 503 ...
# TYPE sipfleet_overload_rejected_total counter
sipfleet_overload_rejected_total{reason="lb_backlog"} 32065.0
sipfleet_overload_rejected_total{reason="registrar_asked"} 3.0
sipfleet_overload_rejected_total{reason="overload"} 0.0
sipfleet_datagrams_dropped_total{reason="overload"} 69.0
sipfleet_datagrams_dropped_total{reason="response_not_ours"} 2.0
sipfleet_requests_total{method="REGISTER"} 99.0
"""


class Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == "/metrics"
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(METRICS if found else b"")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def management() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_twice_the_best_passing_step_else_the_fixed_one_not_sustained() -> None:
    ramp = [Step("r", 3000, passed=True), Step("r", 3800, passed=True), Step("r", 4800)]
    assert overload_base(argparse.Namespace(steps=""), ramp) is ramp[1]
    fixed = [Step("r", 3000, achieved=2784.6, fail_pct=4.27)]
    assert overload_base(argparse.Namespace(steps="3000"), fixed) is fixed[0]
    assert overload_base(argparse.Namespace(steps=""), fixed) is None  # a ramp: no maximum


def test_the_maximum_is_a_rate_that_passed_each_time_it_was_run() -> None:
    ramp = [
        Step("r", 4800, passed=True),
        Step("r", 6000, passed=True),
        Step("r", 7500),
        Step("r", 6000),  # --confirm: the best rate again, failed
        Step("r", 4800, passed=True),  # and the next lower one that passed: held
    ]
    assert sustained(ramp) is ramp[4]
    assert overload_base(argparse.Namespace(steps=""), ramp) is ramp[4]
    assert sustained(ramp[:3]) is ramp[1]
    assert sustained([Step("r", 3000)]) is None
    rows = summary_rows({"r": ramp})
    assert rows[0].split()[:2] == ["r", "4800"]
    assert rows[0].split()[-1] == "6000"  # the first failure above it


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


def test_refusals_by_role_kind_and_reason_and_none_from_a_role_without_api(
    management: str,
) -> None:
    counts = refusals({"lb": management, "registrar": "None"})
    assert counts == {
        "lb 503 lb_backlog": 32065,
        "lb 503 registrar_asked": 3,
        "lb 503 overload": 0,
        "lb dropped overload": 69,
        "lb dropped response_not_ours": 2,
    }
