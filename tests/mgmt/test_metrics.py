"""/metrics of real role processes: an LB with two workers, a registrar and a proxy behind
it, some traffic through the LB. promtool (Debian's prometheus package) checks each
role's text, and the counters move with the traffic: requests by method (an unknown
method as "other"), responses by class, the LB's targets up, a registration counted per
domain from SQL. Each role's text comes from its management API (``GET /metrics``), as a
Prometheus server would scrape it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipfleet.mgmt.metrics import snapshot_dir
from sipfleet.storage import Aor, BindingUpdate, open_storage
from tests.integration.harness import Cluster, RawUa, RoleProcess, running_cluster
from tests.mgmt.conftest import mgmt_url, wait_for

PROMTOOL = shutil.which("promtool")
Found = dict[str, dict[frozenset[tuple[str, str]], float]]


@dataclass
class Metered:
    cluster: Cluster
    nodes: dict[str, RoleProcess]


def _seed_binding(dsn: str) -> None:
    """A binding in example.org before the registrar starts: its first count (at start,
    then every 30 s) sees it."""

    async def save() -> None:
        storage = open_storage(dsn)
        try:
            update = BindingUpdate("sip:carol@192.0.2.9", 2_000_000_000, "seed", 1)
            await storage.location.save(
                Aor("carol", "example.org"), [update], now=1_700_000_000, max_contacts=5
            )
        finally:
            await storage.close()

    asyncio.run(save())


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    workdir: Path = tmp_path_factory.mktemp("metered")
    with running_cluster(workdir) as cluster:
        _seed_binding(cluster.dsn)
        registrar = cluster.start("registrar", registrar={"authenticate": False})
        proxy = cluster.start("proxy")
        lb = cluster.start(
            "lb", node={"workers": 2}, lb={"probe_interval_s": 0.5, "pool_reload_s": 0.5}
        )
        cluster.add_lb_target("registrar", registrar)
        cluster.add_lb_target("proxy", proxy)
        yield Metered(cluster, {"lb": lb, "registrar": registrar, "proxy": proxy})


def scrape(url: str) -> tuple[str, Found]:
    """GET /metrics of the role's management API, parsed."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = answer.read().decode()
    found: Found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(sample.labels.items())
            found.setdefault(sample.name, {})[labels] = sample.value
    return text, found


def value(found: Found, name: str, **labels: str) -> float:
    return found.get(name, {}).get(frozenset(labels.items()), 0.0)


def scraped_showing(url: str, what: str, series: list[tuple[str, dict[str, str]]]) -> Found:
    """The role's metrics, once its snapshots show each of ``series`` (name, labels).
    A role publishes its counts on its own schedule: a request is counted when it
    arrives and its answer when it is sent, after a database lookup, so one snapshot
    may hold the first without the second."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (
            (found := scrape(url)[1])
            and all(value(found, name, **labels) >= 1 for name, labels in series)
            and found
        ),
        5,
        f"{what}: {series}",
    )


def send_traffic(lb: RoleProcess) -> None:
    phone = RawUa(("127.0.0.1", lb.port))
    try:

        def registered() -> bool:  # the LB finds the registrar up after a probe or two
            phone.request("REGISTER", "sip:example.com", user="alice", expires=600)
            try:
                phone.expect_response(200, timeout=1.0)
            except AssertionError:
                return False
            return True

        wait_for(registered, 15, "a REGISTER through the LB answered 200")
        phone.request("OPTIONS", "sip:nobody@example.com", user="alice")
        phone.expect_response(407)  # the proxy wants the caller authenticated
        phone.request("FROB", "sip:nobody@example.com", user="alice")
        phone.recv(1.0)  # whatever the answer: the method is counted as "other"
    finally:
        phone.close()


def test_each_role_passes_promtool_and_counts_the_traffic(metered: Metered) -> None:
    nodes = metered.nodes
    urls = {name: mgmt_url(metered.cluster, name) for name in nodes}
    send_traffic(nodes["lb"])
    # Each of the two workers publishes its own counts on its own schedule, and each
    # message may have been counted by either: wait until all of them show.
    requests, responses = "sipfleet_sip_requests_total", "sipfleet_sip_responses_total"
    counted: list[tuple[str, dict[str, str]]] = [
        (requests, {"role": "lb", "method": "other"}),  # the FROB
        (requests, {"role": "lb", "method": "OPTIONS"}),
        (requests, {"role": "lb", "method": "REGISTER"}),
        (responses, {"role": "lb", "direction": "sent", "class": "2xx"}),
        (responses, {"role": "lb", "direction": "received", "class": "4xx"}),  # the 407
    ]
    lb = scraped_showing(urls["lb"], "the LB counts what it relayed", counted)
    for pool in ("registrar", "proxy"):  # each pool holds the role of its name
        target = f"sip:127.0.0.1:{nodes[pool].port}"
        assert value(lb, "sipfleet_lb_target_up", role="lb", pool=pool, target=target) == 1
    assert "sipfleet_keepalive_flows" in lb
    workers = sorted(p.name for p in snapshot_dir(nodes["lb"].config, "lb").glob("*.json"))
    assert workers == ["0.json", "1.json"]  # each worker publishes; render sums them

    answer_time = "sipfleet_transaction_duration_seconds_count"  # arrival to answer
    saves = "sipfleet_db_statement_duration_seconds_count"
    registrar = scraped_showing(
        urls["registrar"],
        "the registrar counts the REGISTER and its answer",
        [
            (requests, {"role": "registrar", "method": "REGISTER"}),
            (answer_time, {"role": "registrar", "method": "REGISTER"}),
            (saves, {"role": "registrar", "kind": "location.save"}),
        ],
    )
    assert value(registrar, "sipfleet_registered_aors", role="registrar", domain="example.org") == 1
    assert value(registrar, "sipfleet_bindings", role="registrar", domain="example.org") == 1

    proxy = scraped_showing(
        urls["proxy"],
        "the proxy counts the OPTIONS and its 407",
        [
            (requests, {"role": "proxy", "method": "OPTIONS"}),
            (responses, {"role": "proxy", "direction": "sent", "class": "4xx"}),
            (answer_time, {"role": "proxy", "method": "OPTIONS"}),  # the 407
        ],
    )
    assert (
        value(
            proxy,
            "sipfleet_db_statement_duration_seconds_count",
            role="proxy",
            kind="lb_target.list_all",  # it follows its pool
        )
        >= 1
    )

    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian: prometheus; scripts/setup.sh --test)")
    for node in nodes.values():
        text, _ = scrape(urls[node.role])
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, f"{node.role}: {check.stdout}{check.stderr}"
