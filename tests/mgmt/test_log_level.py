"""`PUT /log-level` reaches every worker of a role, not only worker 0 that answers it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.harness import running_cluster
from tests.mgmt.conftest import http, mgmt_url, wait_for

SET = "log level set to debug through the management API"  # worker 0, which answered
TOLD = "log level debug, as set through the management API"  # each other worker


def test_every_worker_takes_the_level_set_through_the_api(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        registrar = cluster.start("registrar", node={"workers": 2, "log_format": "json"})
        url = mgmt_url(cluster, "registrar")
        assert http(f"{url}/log-level", "PUT", {"level": "debug"}) == (200, {"level": "debug"})

        def workers_at(level: str) -> set[int]:
            lines = [json.loads(line) for line in registrar.log_text().splitlines() if line]
            return {line["worker"] for line in lines if line["message"] == level}

        wait_for(lambda: workers_at(TOLD) == {1}, 10, "worker 1 at debug too")
        assert workers_at(SET) == {0}
        assert http(f"{url}/log-level") == (200, {"level": "debug"})
