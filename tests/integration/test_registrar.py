"""The registrar over real sockets, driven by sipp, on the embedded SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, free_port, running_cluster
from tests.integration.sipp import run_sipp

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as cluster:
        cluster.add_subscriber("alice", "example.com", "secret")
        cluster.start("registrar")
        yield cluster


def register(
    cluster: Cluster,
    tmp_path: Path,
    *,
    password: str = "secret",
    expires: int = 600,
    port: int | None = None,
) -> object:
    node = cluster.roles["registrar"]
    users = tmp_path / "users.csv"
    users.write_text(f"SEQUENTIAL\nalice;example.com;{password};alice\n")
    return run_sipp(
        "register_auth",
        f"127.0.0.1:{node.port}",
        tmp_path,
        local_port=port or free_port(),
        inf=users,
        keys={"expires": str(expires)},
        extra=["-au", "alice", "-ap", password],
    )


def test_register_with_digest_stores_the_binding(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    result = register(cluster, tmp_path, port=port)
    assert result.ok, result.explain()  # type: ignore[attr-defined]
    bindings = cluster.bindings("alice", "example.com")
    assert [b.contact for b in bindings] == [f"sip:alice@127.0.0.1:{port};transport=UDP"]
    assert "Contact: <sip:alice@127.0.0.1" in result.messages  # type: ignore[attr-defined]
