"""Closed by default: `sipfleet up` as users start it (no config file) and with the
cluster example, attacked as a hostile network would (relay_probe.py, inside the
cluster's namespace): no relay to an address of the sender's choosing, no flow token
replayed from outside down a phone's flow, over UDP and TCP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.interop.lab import Embedded

pytestmark = [pytest.mark.interop]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(default_or_example: Embedded) -> Embedded:
    """The cluster with alice, whom the probe registers to get a flow token."""
    add = ("subscriber", "add", "alice@example.com", "--password", "s3cret")
    added = default_or_example.sipfleet(*add, *default_or_example.up_args)
    assert added.returncode == 0, added.stderr
    return default_or_example


def test_nothing_reaches_an_address_of_the_attackers_choosing(cluster: Embedded) -> None:
    probe = cluster.ns.run(
        [
            sys.executable,
            "-m",
            "tests.interop.relay_probe",
            "5060",
            "5080",
            "alice@example.com",
            "s3cret",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert probe.returncode == 0, probe.stderr + cluster.log_text()
    results = json.loads(probe.stdout)
    relayed = [name for name, result in results.items() if result["relayed"]]
    assert relayed == [], results
    # Each attempt got a clear refusal (an authentication challenge or 403/404), not silence.
    unanswered = {
        name: r["status"] for name, r in results.items() if r["status"] not in (403, 404, 407)
    }
    assert unanswered == {}, results
    assert len(results) == 2 * 3 * 3 + 2 * 2
    assert "Traceback" not in cluster.log_text()


def test_what_cost_tracebacks_gets_an_answer_or_is_dropped_quietly(cluster: Embedded) -> None:
    probe = cluster.ns.run(
        [sys.executable, "-m", "tests.interop.relay_probe", "--edge", "5060"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert probe.returncode == 0, probe.stderr + cluster.log_text()
    result = json.loads(probe.stdout)
    assert result == {"large": 513, "resets": 20, "after": 200}, cluster.log_text()
    log = cluster.log_text()
    marks = ("Traceback", " ERROR ", "not handled")
    assert not any(mark in log for mark in marks), log[log.find("Traceback") - 2000 :]
