"""Targets from bindings (§16.5) and the forwarded copy (§16.6)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sipfleet.core.proxy.forward import forward_copy, wants_record_route
from sipfleet.core.proxy.targets import Target, plan_for_bindings, plan_for_trunks, target_of
from sipfleet.sip import ParseError
from sipfleet.storage.model import Binding
from tests.core.proxy.messages import request

RR = "<sip:192.0.2.1:5060;lr>"
BINDING = Binding(
    1, "ruid", "bob", "example.com", "sip:bob@10.0.0.5:5062", None, None, 0, None, "c", 1, 0,
    0, 0, None, None, None, None, None, None,
)  # fmt: skip


def binding(contact: str, q: float | None = None, **changes: object) -> Binding:
    return replace(BINDING, contact=contact, q=q, **changes)  # type: ignore[arg-type]


def test_a_binding_through_an_lb_is_reached_by_its_path() -> None:
    target = target_of(binding("sip:bob@10.0.0.5", path="<sip:tok1@lb1;lr>, <sip:lb2;lr>"))
    assert target.routes == ("<sip:tok1@lb1;lr>", "<sip:lb2;lr>")
    assert target.received is None


def test_a_binding_from_behind_a_nat_is_reached_at_its_source() -> None:
    target = target_of(binding("sip:bob@10.0.0.5", received="sip:203.0.113.9:40000"))
    assert target.received == "sip:203.0.113.9:40000"


def test_parallel_plan_has_every_contact_in_one_group() -> None:
    plan = plan_for_bindings([binding("sip:a@h1", 1.0), binding("sip:b@h2", 0.5)], serial=False)
    assert [[t.uri for t in group] for group in plan.groups] == [["sip:a@h1", "sip:b@h2"]]


def test_serial_plan_groups_by_q_best_first_and_no_q_counts_as_one() -> None:
    plan = plan_for_bindings(
        [binding("sip:c@h3", 0.1), binding("sip:a@h1"), binding("sip:b@h2", 1.0)], serial=True
    )
    assert [[t.uri for t in group] for group in plan.groups] == [
        ["sip:a@h1", "sip:b@h2"],
        ["sip:c@h3"],
    ]
    assert plan.advance(486)
    assert plan.advance(408)
    assert not plan.advance(603)


def test_trunks_fail_over_on_408_and_5xx_only() -> None:
    plan = plan_for_trunks(["sip:1@gw1", "sip:1@gw2"])
    assert len(plan.groups) == 2
    assert plan.advance(408)
    assert plan.advance(503)
    assert not plan.advance(404)
    assert not plan.advance(486)


def test_forward_copy_retargets_decrements_and_record_routes() -> None:
    original = request(max_forwards=10)
    copy, hop = forward_copy(original, Target("sip:bob@10.0.0.5:5062"), record_route=RR)
    assert copy.uri_text == "sip:bob@10.0.0.5:5062"
    assert copy.max_forwards == 9
    assert copy.header_values("record-route") == [RR]
    assert str(hop) == "sip:bob@10.0.0.5:5062"
    assert original.uri_text == "sip:bob@example.com"  # the original is untouched
    assert original.max_forwards == 10


def test_forward_copy_adds_max_forwards_when_missing() -> None:
    copy, _ = forward_copy(request(max_forwards=None), Target(), record_route=None)
    assert copy.max_forwards == 70


def test_the_path_becomes_the_route_set_and_the_next_hop() -> None:
    target = Target("sip:bob@10.0.0.5", ("<sip:tok@192.0.2.50:5060;lr>",))
    copy, hop = forward_copy(request(), target, record_route=None)
    assert copy.header_values("route") == ["<sip:tok@192.0.2.50:5060;lr>"]
    assert str(hop) == "sip:tok@192.0.2.50:5060;lr"


def test_received_is_the_next_hop_with_the_contact_transport() -> None:
    target = Target("sip:bob@10.0.0.5;transport=tcp", received="sip:203.0.113.9:40000")
    _, hop = forward_copy(request(), target, record_route=None)
    assert str(hop) == "sip:203.0.113.9:40000;transport=tcp"


def test_extra_headers_are_added() -> None:
    copy, _ = forward_copy(request(), Target(), record_route=None, headers=[("X-Caller", "1")])
    assert copy.header("x-caller") == "1"


def test_a_target_that_does_not_parse_raises() -> None:
    with pytest.raises(ParseError):
        forward_copy(request(), Target("sip:bob@"), record_route=None)


def test_only_dialog_creating_requests_are_record_routed() -> None:
    assert wants_record_route(request("INVITE"))
    assert wants_record_route(request("SUBSCRIBE"))
    assert not wants_record_route(request("MESSAGE"))
    assert not wants_record_route(request("INVITE", to_tag="b1"))  # re-INVITE
