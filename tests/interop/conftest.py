"""Fixtures of the interop lab: the embedded cluster as users get it, and the NAT lab."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from sipfleet.config.model import LbSection
from tests.interop.lab import Embedded, embedded_cluster, why_no_lab
from tests.interop.natlab import NatLab, nat_lab, why_no_natlab


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
