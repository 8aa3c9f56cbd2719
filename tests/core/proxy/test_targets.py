"""Targets and fork plans: the written-out ``__init__`` of the frozen dataclasses."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipfleet.core.proxy.targets import (
    ForkPlan,
    Target,
    next_group_unless_success_or_global,
    next_trunk_on_failover,
)

texts = st.none() | st.text(max_size=8)
targets = st.builds(
    Target,
    texts,
    st.tuples(st.text(max_size=4)),
    texts,
    texts,
    st.none() | st.floats(0, 60),
)


@pytest.mark.parametrize("cls", [Target, ForkPlan])
def test_the_written_out_init_gives_each_field_its_default(cls: type) -> None:
    """What the generated ``__init__`` would: every field left out takes its default
    (the compiled build's ``__init__`` has no signature to compare)."""
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    made = cls(**{name: ((),) for name in required})
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            assert getattr(made, f.name) == f.default, f.name
    assert [f.name for f in dataclasses.fields(cls)][: len(required)] == required


@given(texts, st.tuples(st.text(max_size=4)), texts, texts, st.none() | st.floats(0, 60))
def test_a_target_holds_what_it_was_made_with(
    uri: str | None,
    routes: tuple[str, ...],
    received: str | None,
    gateway: str | None,
    timeout: float | None,
) -> None:
    alternates = (Target("sip:other@example.com"),)
    target = Target(uri, routes, received, gateway, timeout, alternates)
    assert dataclasses.astuple(target)[:5] == (uri, routes, received, gateway, timeout)
    assert target.alternates == alternates
    named = Target(
        uri=uri,
        routes=routes,
        received=received,
        gateway=gateway,
        timeout=timeout,
        alternates=alternates,
    )
    assert named == target
    assert hash(named) == hash(target)


@given(st.lists(targets, min_size=1, max_size=3), st.booleans())
def test_a_plan_holds_what_it_was_made_with(group: list[Target], last: bool) -> None:
    headers = (("X-A", "1"),)
    plan = ForkPlan((tuple(group),), next_trunk_on_failover, headers, last)
    assert plan.groups == (tuple(group),)
    assert plan.advance is next_trunk_on_failover
    assert plan.headers == headers
    assert plan.last_group_answers is last
    default = ForkPlan((tuple(group),))
    assert default.advance is next_group_unless_success_or_global
    assert default.headers == ()
    assert default.last_group_answers is False


def test_targets_and_plans_stay_frozen() -> None:
    target = Target("sip:bob@example.com")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.uri = "sip:eve@example.com"  # type: ignore[misc]
    plan = ForkPlan.single(target)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.headers = ()  # type: ignore[misc]
    assert dataclasses.replace(target, uri="sip:carol@example.com").routes == ()
