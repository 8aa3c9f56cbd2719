"""Fixtures of the interop lab: the embedded cluster as users get it, the NAT lab, and real
phones on the embedded cluster (for test modules that name their client in ``AGENT``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipfleet.config.model import LbSection
from tests.interop.agents import Agent
from tests.interop.lab import Embedded, embedded_cluster, why_no_lab
from tests.interop.natlab import NatLab, nat_lab, why_no_natlab
from tests.interop.phones import DOMAIN, PASSWORD, SUBSCRIBERS, Phone, add_subscribers, rtp_ports


@pytest.fixture(scope="module")
def embedded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Embedded]:
    """`sipfleet up` with no config file in a namespace of its own, one per test module."""
    why = why_no_lab()
    if why is not None:
        pytest.skip(why)
    hint = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with embedded_cluster(tmp_path_factory.mktemp(f"embedded-{hint}"), hint) as cluster:
        yield cluster


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster" / "cluster.toml"


@pytest.fixture(params=["no-config", "cluster-example"], scope="module")
def default_or_example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Embedded]:
    """`sipfleet up` with no config file, then with the cluster example (``-c``, two
    registrars and two proxies): each test runs on both. ``up_args`` is what the CLI
    needs to reach the same database."""
    why = why_no_lab()
    if why is not None:
        pytest.skip(why)
    up_args = () if request.param == "no-config" else ("-c", str(EXAMPLE))
    hint = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:8]
    tmp = tmp_path_factory.mktemp(f"{hint}-{request.param}")
    with embedded_cluster(tmp, f"{hint}{request.param[:2]}", up_args=up_args) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def natlab(request: pytest.FixtureRequest) -> Iterator[NatLab]:
    """Phones behind a NAT that forgets idle UDP mappings a few seconds after sipfleet's
    default NAT keepalive interval (so only the keepalives keep a phone reachable)."""
    why = why_no_natlab()
    if why is not None:
        pytest.skip(why)
    with nat_lab("nat", nat_timeout_for_default_keepalives()) as lab:
        yield lab


def nat_timeout_for_default_keepalives() -> int:
    """The shortest NAT UDP timeout the default keepalive interval is meant to beat."""
    interval = LbSection().keepalive_interval_s
    return math.ceil(interval) + 5


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> type[Agent[Any]]:
    """The client a test module drives: the driver class it names in ``AGENT``."""
    kind: type[Agent[Any]] = request.module.AGENT
    return kind


@pytest.fixture(scope="module")
def phone_cluster(embedded: Embedded, agent: type[Agent[Any]]) -> Embedded:
    """The module's embedded cluster, its namespace ready for the module's client, with
    the SUBSCRIBERS (tests/interop/phones.py) added."""
    agent.prepare_namespace(embedded.ns)
    add_subscribers(embedded, SUBSCRIBERS)
    return embedded


@pytest.fixture
def phone(phone_cluster: Embedded, agent: type[Agent[Any]], tmp_path: Path) -> Iterator[Phone]:
    """Start a phone of the module's client (or of ``kind``) for a user on the LB; it
    registers on its own. All are stopped after; what went wrong in a client that no step
    waited on (``Agent.trouble``) fails the test."""
    started: list[Agent[Any]] = []

    def start(
        user: str,
        *,
        transport: str = "udp",
        password: str = PASSWORD,
        kind: type[Agent[Any]] | None = None,
    ) -> Agent[Any]:
        driver = kind or agent
        tls = transport == "tls"  # the embedded default's TLS: the next port, self-signed
        started.append(
            driver(
                phone_cluster.ns,
                tmp_path,
                user,
                DOMAIN,
                password,
                transport=transport,
                proxy=(phone_cluster.lb_host, phone_cluster.lb_port + tls),
                rtp_base=next(rtp_ports(driver)),
                trusted_ca=phone_cluster.data_dir / "tls" / "lb.crt" if tls else None,
            )
        )
        return started[-1].start()

    yield start
    troubles = [f"{one.aor}: {trouble}" for one in started if (trouble := one.trouble())]
    for one in started:
        one.stop()
    assert not troubles, troubles
    print("--- sipfleet up (tail) ---")
    print(phone_cluster.log_text()[-6000:])
