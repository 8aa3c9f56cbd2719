"""The proxy's memory under a flood of stray requests is bounded by [sip] max_transactions:
every kept transaction counts, past the cap new requests get a stateless 503."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.flood import flood, rss_bytes
from tests.integration.harness import Cluster, running_cluster

pytestmark = pytest.mark.integration

CAP = 2_000
FLOOD = 30_000  # uncapped, these would keep ~60 MB for 32 s (2.1 kB each, measured)
MB = 1 << 20


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("proxy-flood")) as cluster:
        cluster.start("proxy", sip={"max_transactions": CAP})
        yield cluster


def test_a_flood_of_stray_requests_meets_the_cap_not_the_memory(cluster: Cluster) -> None:
    proxy = cluster.roles["proxy"]
    assert proxy.process is not None
    target = ("127.0.0.1", proxy.port)
    warm = flood(target, 200, 2_000, linger=0.5)  # what the first requests load, loaded
    assert warm.statuses[407] == 200
    before = rss_bytes(proxy.process.pid)
    result = flood(target, FLOOD, 5_000, start=warm.sent)
    grown = rss_bytes(proxy.process.pid) - before
    statuses = result.statuses
    assert statuses[407] <= CAP  # challenged and kept for Timer J / H: up to the cap
    assert statuses[503] >= FLOOD - CAP - FLOOD // 20  # the rest shed (a few may be lost)
    assert grown < 20 * MB, f"RSS grew {grown / MB:.0f} MB"
    assert proxy.process.poll() is None
