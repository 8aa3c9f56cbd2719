"""A small cluster of real `sipfleet run` processes for the management API and page tests:
an LB with the registrar and the proxy in its pools, one phone registered, two LCR
gateways (one disabled). Started once for tests/mgmt (about 3 s)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipfleet.storage import open_storage
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability
from tests.integration.harness import Cluster, RawUa, running_cluster

PHONE = 1


@dataclass
class Fleet:
    cluster: Cluster
    urls: dict[str, str]  # role name -> its management API's base URL
    pool_uris: dict[str, str]  # pool -> the target URI of the role in it

    def url(self, role: str, path: str) -> str:
        return self.urls[role] + path

    def pool(self, pool: str) -> dict[str, dict[str, Any]]:
        """The LB's ``/lb/pools`` records of ``pool``, by URI."""
        status, body = http(self.url("lb", "/lb/pools"))
        assert status == 200
        return {target["uri"]: target for target in body["pools"][pool]}

    def wait_until_pools_up(self) -> None:
        """The LB has probed the registrar and the proxy and found them up."""

        def both_up() -> bool:
            return all(
                self.pool(pool).get(uri, {}).get("live") == "up"
                for pool, uri in self.pool_uris.items()
            )

        wait_for(both_up, 10, "the LB finds the registrar and the proxy up")


def mgmt_url(cluster: Cluster, name: str) -> str:
    """The API's URL, as the role wrote it into its ready file."""
    facts = json.loads((cluster.workdir / f"{name}.ready").read_text())
    assert facts["mgmt"].startswith("http://127.0.0.1:")
    return str(facts["mgmt"])


def http(
    url: str, method: str = "GET", body: Any = None, token: str | None = None, raw: bytes = b""
) -> tuple[int, Any]:
    """(status, the JSON answer or the text of another kind) of one request."""
    data = json.dumps(body).encode() if body is not None else raw or None
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, kind, payload = answer.status, answer.headers.get_content_type(), answer.read()
    except urllib.error.HTTPError as error:
        status, kind, payload = error.code, error.headers.get_content_type(), error.read()
    if kind == "application/json":
        return status, json.loads(payload)
    return status, payload.decode()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy (its value is returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def _add_gateways(dsn: str) -> None:
    async def add() -> None:
        storage = open_storage(dsn)
        try:
            await storage.lcr.add_gateway(
                Gateway("sipgw1", "127.0.0.1", 5999), [GatewayCapability("sipgw1", PHONE)]
            )
            await storage.lcr.add_gateway(
                Gateway("sipgw2", "127.0.0.1", 5998, enabled=False),
                [GatewayCapability("sipgw2", PHONE)],
            )
        finally:
            await storage.close()

    asyncio.run(add())


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir: Path = tmp_path_factory.mktemp("fleet")
    with running_cluster(workdir) as cluster:
        _add_gateways(cluster.dsn)
        registrar = cluster.start("registrar", registrar={"authenticate": False})
        proxy = cluster.start("proxy")
        cluster.start("lb", lb={"probe_interval_s": 0.5, "pool_reload_s": 0.5})
        pool_uris = {
            "registrar": cluster.add_lb_target("registrar", registrar),
            "proxy": cluster.add_lb_target("proxy", proxy),
        }
        phone = RawUa(("127.0.0.1", registrar.port))
        try:
            phone.request("REGISTER", "sip:example.com", user="alice", expires=600)
            phone.expect_response(200)
        finally:
            phone.close()
        urls = {name: mgmt_url(cluster, name) for name in ("lb", "registrar", "proxy")}
        yield Fleet(cluster, urls, pool_uris)
