"""Serial failover over off-net trunks in the response context (sans-IO, DESIGN §3):
next trunk on 408, 5xx, a transport error or the trunk timeout; any other final answer
ends the search and is what the caller gets; all failed: the last failure."""

from __future__ import annotations

from sipfleet.core.proxy.context import (
    ArmTimerC,
    Branch,
    CancelBranch,
    ContextAction,
    Exhausted,
    ResponseContext,
    StartBranch,
    TrunkEnded,
    Upstream,
)
from sipfleet.core.proxy.targets import ForkPlan, Target, plan_for_trunks
from sipfleet.sip import Response
from tests.core.proxy.messages import request, response_to

INVITE = request("INVITE", "sip:4312345@pstn.example.net")
TIMER_C = 180.0
TRUNK_TIMEOUT = 5.0


def trunks(count: int = 3, timeout: float | None = TRUNK_TIMEOUT) -> list[Target]:
    return [
        Target(f"sip:01431234{n}@10.0.0.{n}", gateway=f"gw{n}", timeout=timeout)
        for n in range(1, count + 1)
    ]


def start(
    plan: ForkPlan, *, method: str = "INVITE", ask: bool = False
) -> tuple[ResponseContext, list[ContextAction]]:
    context = ResponseContext(
        request(method, "sip:4312345@pstn.example.net"),
        timer_c=TIMER_C,
        cancel_wait=32.0,
        ask_on_failure=ask,
        to_tag="px",
    )
    return context, context.start(plan)


def started(actions: list[ContextAction]) -> list[Branch]:
    return [a.branch for a in actions if isinstance(a, StartBranch)]


def only_started(actions: list[ContextAction]) -> Branch:
    (branch,) = started(actions)
    return branch


def answer(status: int, **kwargs: object) -> Response:
    return response_to(INVITE, status, **kwargs)  # type: ignore[arg-type]


def upstream(actions: list[ContextAction]) -> list[int]:
    return [a.response.status for a in actions if isinstance(a, Upstream)]


def ended(actions: list[ContextAction]) -> list[tuple[str | None, int, bool]]:
    return [
        (a.branch.target.gateway, a.branch.status, a.branch.progressed)
        for a in actions
        if isinstance(a, TrunkEnded)
    ]


# -- one trunk at a time, in order -----------------------------------------------------------
def test_only_the_first_trunk_starts_with_its_timeout_in_timer_c_s_slot() -> None:
    _, actions = start(plan_for_trunks(trunks()))
    assert [type(a) for a in actions] == [StartBranch, ArmTimerC]
    first = only_started(actions)
    assert first.target.uri == "sip:014312341@10.0.0.1"
    assert [a.delay for a in actions if isinstance(a, ArmTimerC)] == [TRUNK_TIMEOUT]


def test_without_a_trunk_timeout_timer_c_applies() -> None:
    _, actions = start(plan_for_trunks(trunks(timeout=None)))
    assert [a.delay for a in actions if isinstance(a, ArmTimerC)] == [TIMER_C]


def test_each_failover_status_moves_to_the_next_trunk() -> None:
    for status in (408, 500, 502, 503, 504, 580):
        context, actions = start(plan_for_trunks(trunks()))
        first = only_started(actions)
        after = context.on_response(first, answer(status))
        assert only_started(after).target.gateway == "gw2", status
        assert upstream(after) == [], status  # nothing reaches the caller yet


def test_a_timeout_and_a_transport_error_move_to_the_next_trunk() -> None:
    for status in (408, 503):  # Timer B, and what the engine reports for a send failure
        context, actions = start(plan_for_trunks(trunks()))
        after = context.on_failure(only_started(actions), status)
        assert only_started(after).target.gateway == "gw2"


def test_any_other_final_answer_ends_the_search_and_goes_to_the_caller() -> None:
    for status in (200, 302, 404, 486, 487, 603):
        context, actions = start(plan_for_trunks(trunks()))
        after = context.on_response(only_started(actions), answer(status))
        assert started(after) == [], status
        assert upstream(after) == [status], status
        assert context.final_sent


def test_a_busy_second_trunk_wins_over_an_earlier_timeout() -> None:
    """Not the §16.7 'best' of all (408 would be chosen among 4xx): the trunk that ended
    the search answers the caller."""
    context, actions = start(plan_for_trunks(trunks()))
    second = only_started(context.on_failure(only_started(actions), 408))
    after = context.on_response(second, answer(486))
    assert started(after) == []
    assert upstream(after) == [486]


def test_all_trunks_failing_gives_the_last_failure() -> None:
    context, actions = start(plan_for_trunks(trunks()))
    second = only_started(context.on_response(only_started(actions), answer(502)))
    third = only_started(context.on_failure(second, 408))
    assert upstream(context.on_response(third, answer(504))) == [504]


def test_a_last_failure_of_503_goes_up_as_500() -> None:
    """§16.7 step 6: a proxy never relays 503 (the caller would think the proxy is down)."""
    context, actions = start(plan_for_trunks(trunks(2)))
    second = only_started(context.on_response(only_started(actions), answer(500)))
    after = context.on_response(second, answer(503))
    assert upstream(after) == [500]
    final = next(a.response for a in after if isinstance(a, Upstream))
    assert final.reason == "Service Unavailable Downstream"


def test_the_failure_hook_sees_the_last_failure() -> None:
    context, actions = start(plan_for_trunks(trunks(2)), ask=True)
    second = only_started(context.on_failure(only_started(actions), 408))
    (exhausted,) = [a for a in context.on_response(second, answer(502)) if isinstance(a, Exhausted)]
    assert exhausted.best.status == 502


# -- provisional responses and the trunk timeout ----------------------------------------------
def test_ringing_of_the_current_trunk_goes_upstream() -> None:
    context, actions = start(plan_for_trunks(trunks()))
    first = only_started(actions)
    after = context.on_response(first, answer(183))
    assert upstream(after) == [183]
    assert [a.delay for a in after if isinstance(a, ArmTimerC)] == [TIMER_C]  # ringing: Timer C


def test_a_trunk_that_says_nothing_is_left_without_cancel_and_the_next_starts() -> None:
    context, actions = start(plan_for_trunks(trunks()))
    first = only_started(actions)
    after = context.on_timer_c(first)  # the trunk timeout, in Timer C's slot
    assert [a for a in after if isinstance(a, CancelBranch)] == []  # §9.1: nothing to cancel
    assert only_started(after).target.gateway == "gw2"
    assert ended(after) == [("gw1", 408, False)]
    # should it still wake up and ring, it is cancelled then
    late = context.on_response(first, answer(180))
    assert [a.branch for a in late if isinstance(a, CancelBranch)] == [first]
    assert upstream(late) == []


def test_a_trunk_that_sent_only_100_is_cancelled_at_its_timeout() -> None:
    context, actions = start(plan_for_trunks(trunks()))
    first = only_started(actions)
    assert context.on_response(first, answer(100)) == []
    after = context.on_timer_c(first)
    assert [a.branch for a in after if isinstance(a, CancelBranch)] == [first]
    assert only_started(after).target.gateway == "gw2"
    # its 487 to our CANCEL changes nothing: it already counted as 408
    assert context.on_response(first, answer(487)) == []


def test_a_ringing_trunk_is_not_given_up_at_the_trunk_timeout() -> None:
    """Once it rings the callee is being alerted; only Timer C limits that."""
    context, actions = start(plan_for_trunks(trunks()))
    first = only_started(actions)
    context.on_response(first, answer(180))
    after = context.on_timer_c(first)  # the early slot fires: Timer C's rules now
    assert [a.branch for a in after if isinstance(a, CancelBranch)] == [first]
    assert started(after) == []  # waits for the CANCEL's outcome (cancel_wait)
    assert first.expired
    # the 487 counts as 408 (Timer C) and is a failover status: the next trunk
    moved = context.on_response(first, answer(487))
    assert only_started(moved).target.gateway == "gw2"
    assert ended(moved) == [("gw1", 408, True)]


def test_caller_cancel_stops_the_search() -> None:
    context, actions = start(plan_for_trunks(trunks()))
    first = only_started(actions)
    context.on_response(first, answer(180))
    after = context.cancel()
    assert upstream(after) == [487]
    assert [a.branch for a in after if isinstance(a, CancelBranch)] == [first]
    assert started(context.on_response(first, answer(487))) == []


# -- what the health of the gateways hears ---------------------------------------------------
def test_every_trunk_attempt_reports_how_it_ended() -> None:
    context, actions = start(plan_for_trunks(trunks()))
    first = only_started(actions)
    moved = context.on_response(first, answer(503))
    assert ended(moved) == [("gw1", 503, False)]
    second = only_started(moved)
    context.on_response(second, answer(183))
    assert ended(context.on_response(second, answer(200))) == [("gw2", 200, True)]


def test_plain_uris_and_local_forks_report_nothing() -> None:
    context, actions = start(plan_for_trunks(["sip:1@10.0.0.1", "sip:1@10.0.0.2"]))
    assert ended(context.on_response(only_started(actions), answer(503))) == []
    context, actions = start(ForkPlan.single(Target("sip:bob@10.0.0.9")))
    assert ended(context.on_response(only_started(actions), answer(486))) == []


def test_non_invite_trunks_fail_over_without_timer_c() -> None:
    context, actions = start(plan_for_trunks(trunks()), method="MESSAGE")
    assert [type(a) for a in actions] == [StartBranch]
    after = context.on_failure(only_started(actions), 408)
    assert only_started(after).target.gateway == "gw2"
