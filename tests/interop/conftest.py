"""Fixtures of the interop lab: the embedded cluster as users get it, and the NAT lab."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interop.lab import Embedded, embedded_cluster, why_no_lab


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
