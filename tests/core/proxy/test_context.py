"""The §16.7 response context: forking, best response, Timer C, CANCEL (sans-IO)."""

from __future__ import annotations

from dataclasses import fields
from typing import cast

from sipfleet.core.proxy.actions import AskPolicy
from sipfleet.core.proxy.context import (
    ArmTimerC,
    Branch,
    CancelBranch,
    ContextAction,
    Exhausted,
    ResponseContext,
    StartBranch,
    ToTag,
    Upstream,
    best_status,
)
from sipfleet.core.proxy.core import _BranchRef
from sipfleet.core.proxy.targets import ForkPlan, Target, next_trunk_on_failover
from sipfleet.routing.api import CallContext, CallServices
from sipfleet.sip import Response
from sipfleet.transport.base import Peer
from tests.core.proxy.messages import request, response_to

INVITE = request()
TIMER_C = 180.0
PEER = Peer("udp", "198.51.100.7", 5062, "192.0.2.1", 5060)


def fork(
    *uris: str, method: str = "INVITE", ask: bool = False
) -> tuple[ResponseContext, list[Branch]]:
    context = ResponseContext(
        request(method), timer_c=TIMER_C, cancel_wait=32.0, ask_on_failure=ask, to_tag="px"
    )
    actions = context.start(ForkPlan((tuple(Target(uri) for uri in uris),)))
    return context, [a.branch for a in actions if isinstance(a, StartBranch)]


def answer(status: int, **kwargs: object) -> Response:
    return response_to(INVITE, status, **kwargs)  # type: ignore[arg-type]


def upstream(actions: list[ContextAction]) -> list[int]:
    return [a.response.status for a in actions if isinstance(a, Upstream)]


def cancelled(actions: list[ContextAction]) -> list[int]:
    return [a.branch.index for a in actions if isinstance(a, CancelBranch)]


def test_start_forks_every_target_and_arms_timer_c() -> None:
    context = ResponseContext(INVITE, timer_c=TIMER_C)
    actions = context.start(ForkPlan(((Target("sip:a@h1"), Target("sip:b@h2")),)))
    assert [type(a) for a in actions] == [StartBranch, ArmTimerC, StartBranch, ArmTimerC]
    assert [a.delay for a in actions if isinstance(a, ArmTimerC)] == [TIMER_C, TIMER_C]


def test_non_invite_has_no_timer_c() -> None:
    _, branches = fork("sip:a@h1", method="MESSAGE")
    assert len(branches) == 1


def test_100_is_absorbed_and_180_goes_up_at_once_and_rearms_timer_c() -> None:
    context, (branch,) = fork("sip:a@h1")
    assert context.on_response(branch, answer(100)) == []
    actions = context.on_response(branch, answer(180))
    assert upstream(actions) == [180]
    assert any(isinstance(a, ArmTimerC) for a in actions)


def test_2xx_goes_up_and_cancels_the_other_ringing_branches() -> None:
    context, (first, second) = fork("sip:a@h1", "sip:b@h2")
    context.on_response(first, answer(180, to_tag="t1"))
    context.on_response(second, answer(180, to_tag="t2"))
    actions = context.on_response(first, answer(200, to_tag="t1"))
    assert upstream(actions) == [200]
    assert cancelled(actions) == [1]
    assert context.final_sent


def test_a_branch_without_provisional_is_cancelled_when_its_first_1xx_comes() -> None:
    context, (first, second) = fork("sip:a@h1", "sip:b@h2")
    assert cancelled(context.on_response(first, answer(200))) == []  # §9.1: not yet
    late = context.on_response(second, answer(180))
    assert cancelled(late) == [1]
    assert upstream(late) == []  # nothing after the final response but 2xx


def test_every_later_2xx_still_goes_upstream() -> None:
    context, (first, second) = fork("sip:a@h1", "sip:b@h2")
    context.on_response(first, answer(200, to_tag="t1"))
    assert upstream(context.on_response(second, answer(200, to_tag="t2"))) == [200]
    assert upstream(context.on_response(first, answer(200, to_tag="t1"))) == [200]


def test_one_busy_one_ringing_waits_for_the_other() -> None:
    context, (busy, ringing) = fork("sip:a@h1", "sip:b@h2")
    context.on_response(ringing, answer(180))
    assert upstream(context.on_response(busy, answer(486))) == []
    assert upstream(context.on_response(ringing, answer(200))) == [200]


def test_best_response_is_sent_when_all_failed() -> None:
    context, (first, second) = fork("sip:a@h1", "sip:b@h2")
    context.on_response(first, answer(486))
    assert upstream(context.on_response(second, answer(302))) == [302]  # lowest class


def test_6xx_wins_and_cancels_the_rest() -> None:
    context, (first, second, third) = fork("sip:a@h1", "sip:b@h2", "sip:c@h3")
    context.on_response(second, answer(180))
    actions = context.on_response(first, answer(603))
    assert cancelled(actions) == [1]
    assert upstream(actions) == []  # the others are still pending
    context.on_response(second, answer(487))
    assert upstream(context.on_failure(third, 408)) == [603]


def test_timeouts_count_as_408_and_transport_errors_never_show_as_503() -> None:
    context, (first, second) = fork("sip:a@h1", "sip:b@h2")
    context.on_failure(first, 503)
    (final,) = [a.response for a in context.on_failure(second, 503) if isinstance(a, Upstream)]
    assert final.status == 500  # §16.7: a 503 is never forwarded
    context, (only,) = fork("sip:a@h1")
    (final,) = [a.response for a in context.on_failure(only, 408) if isinstance(a, Upstream)]
    assert (final.status, final.to.tag) == (408, "px")


def test_the_to_tag_is_made_only_when_the_context_answers_itself_and_only_once() -> None:
    tag = ToTag()
    context = ResponseContext(request(), to_tag=tag)
    plan = ForkPlan(((Target("sip:a@h1"),),))
    (branch,) = [a.branch for a in context.start(plan) if isinstance(a, StartBranch)]
    context.on_response(branch, answer(180, to_tag="t1"))
    assert upstream(context.on_response(branch, answer(486, to_tag="t1"))) == [486]
    assert tag._text is None  # relayed answers keep the callee's tag: none made

    context = ResponseContext(request(), to_tag=tag)
    plan = ForkPlan(((Target("sip:a@h1"), Target("sip:b@h2")),))
    first, second = [a.branch for a in context.start(plan) if isinstance(a, StartBranch)]
    context.on_failure(first, 408)
    (final,) = [a.response for a in context.on_failure(second, 408) if isinstance(a, Upstream)]
    made = tag.text()
    assert (final.status, final.to.tag) == (408, made)
    assert len(made) == 12  # sip.builders.new_tag's
    assert tag.text() == made  # the same for the call's own responses after it


def test_a_real_503_from_downstream_becomes_500() -> None:
    context, (only,) = fork("sip:a@h1")
    actions = context.on_response(only, answer(503, headers=[("Retry-After", "10")]))
    assert upstream(actions) == [500]


def test_401_and_407_challenges_are_gathered() -> None:
    context, (first, second) = fork("sip:a@h1", "sip:b@h2")
    context.on_response(first, answer(407, headers=[("Proxy-Authenticate", 'Digest realm="a"')]))
    actions = context.on_response(
        second, answer(401, headers=[("WWW-Authenticate", 'Digest realm="b"')])
    )
    (final,) = [a.response for a in actions if isinstance(a, Upstream)]
    assert final.status in (401, 407)
    assert final.header_lines("proxy-authenticate") == ['Digest realm="a"']
    assert final.header_lines("www-authenticate") == ['Digest realm="b"']


def test_timer_c_on_a_ringing_branch_cancels_it_and_the_caller_gets_408() -> None:
    context, (branch,) = fork("sip:a@h1")
    context.on_response(branch, answer(180))
    actions = context.on_timer_c(branch)
    assert cancelled(actions) == [0]
    assert [a.delay for a in actions if isinstance(a, ArmTimerC)] == [32.0]
    assert upstream(context.on_response(branch, answer(487))) == [408]


def test_timer_c_again_after_the_cancel_gives_up_on_the_branch() -> None:
    context, (branch,) = fork("sip:a@h1")
    context.on_response(branch, answer(180))
    context.on_timer_c(branch)
    assert upstream(context.on_timer_c(branch)) == [408]
    assert context.on_response(branch, answer(487)) == []  # counted already


def test_timer_c_without_provisional_ends_the_branch_at_once() -> None:
    context, (branch,) = fork("sip:a@h1")
    assert upstream(context.on_timer_c(branch)) == [408]
    assert cancelled(context.on_response(branch, answer(180))) == [0]  # should it wake up


def test_cancel_from_upstream_answers_487_and_cancels_pending() -> None:
    context, (first, second) = fork("sip:a@h1", "sip:b@h2")
    context.on_response(first, answer(180))
    actions = context.cancel()
    assert upstream(actions) == [487]
    assert cancelled(actions) == [0]
    assert second.cancel_wanted
    assert context.cancel() == []
    assert upstream(context.on_response(first, answer(487))) == []


def test_serial_groups_go_on_after_failure_and_stop_after_6xx() -> None:
    plan = ForkPlan(((Target("sip:a@h1"),), (Target("sip:b@h2"), Target("sip:c@h3"))))
    context = ResponseContext(INVITE)
    (first,) = [a.branch for a in context.start(plan) if isinstance(a, StartBranch)]
    actions = context.on_response(first, answer(486))
    assert [a.branch.target.uri for a in actions if isinstance(a, StartBranch)] == [
        "sip:b@h2",
        "sip:c@h3",
    ]
    context = ResponseContext(INVITE)
    (first,) = [a.branch for a in context.start(plan) if isinstance(a, StartBranch)]
    assert upstream(context.on_response(first, answer(600))) == [600]


def test_trunk_failover_stops_on_a_final_answer_that_is_not_a_failure_of_the_trunk() -> None:
    plan = ForkPlan(((Target("sip:1@gw1"),), (Target("sip:1@gw2"),)), next_trunk_on_failover)
    context = ResponseContext(INVITE)
    (gw1,) = [a.branch for a in context.start(plan) if isinstance(a, StartBranch)]
    assert upstream(context.on_response(gw1, answer(404))) == [404]
    context = ResponseContext(INVITE)
    (gw1,) = [a.branch for a in context.start(plan) if isinstance(a, StartBranch)]
    assert any(isinstance(a, StartBranch) for a in context.on_failure(gw1, 408))


def test_exhausted_asks_the_policy_and_can_be_rerouted() -> None:
    context, (branch,) = fork("sip:a@h1", ask=True)
    (exhausted,) = [a for a in context.on_response(branch, answer(486)) if isinstance(a, Exhausted)]
    assert exhausted.best.status == 486
    actions = context.reroute(ForkPlan(((Target("sip:voicemail@h9"),),)))
    (again,) = [a.branch for a in actions if isinstance(a, StartBranch)]
    assert upstream(context.on_response(again, answer(200))) == [200]


def test_give_up_sends_the_best_response_once() -> None:
    context, (branch,) = fork("sip:a@h1", ask=True)
    best = context.on_response(branch, answer(486))[-1]
    assert isinstance(best, Exhausted)
    assert upstream(context.give_up(best.best)) == [486]
    assert context.give_up(best.best) == []


def test_best_status_rules() -> None:
    assert best_status([486, 302, 500]) == 302
    assert best_status([486, 404, 407]) == 407
    assert best_status([404, 486]) == 404
    assert best_status([500, 603, 404]) == 603
    assert best_status([]) == 408


def test_actions_with_a_written_out_init_are_still_their_dataclasses() -> None:
    """StartBranch, ArmTimerC, AskPolicy and the core's _BranchRef spell out their
    __init__ (compiled, the generated one is interpreted): same fields, defaults, ==."""
    branch, other = Branch(0, Target()), Branch(1, Target())
    context = CallContext(INVITE, PEER, cast(CallServices, object()))
    made = [
        (StartBranch(branch), (branch,)),
        (ArmTimerC(branch, 1.5), (branch, 1.5)),
        (AskPolicy(("k",), context), (("k",), context, None)),
        (_BranchRef(("k",), 2), (("k",), 2)),
    ]
    for action, values in made:
        assert tuple(getattr(action, f.name) for f in fields(action)) == values
        assert action == type(action)(*values)
    assert StartBranch(branch) != StartBranch(other)
    assert ArmTimerC(branch, 1.5) != ArmTimerC(branch, 2.0)
    assert repr(ArmTimerC(branch, 1.5)).startswith("ArmTimerC(branch=")
