"""The response context of RFC 3261 §16.7, sans-IO: branches in, actions out.

One context per forwarded request. The engine reports what happens to each branch
(a response, a timeout, a transport error, Timer C) and the CANCEL from upstream; the
context answers with actions: start a branch, cancel one, arm or disarm its Timer C,
send a response upstream, or ask the policy what to do now that every branch failed.

Rules (§16.7, §16.8, §16.10):
- 100 is absorbed; 101-199 go upstream at once and re-arm the branch's Timer C.
- Every 2xx goes upstream at once, even after a final response; for INVITE the first
  one, or any 6xx, cancels the other pending branches and ends serial forking.
- 3xx-5xx are kept; when no branch is pending the next serial group starts (when the
  plan's ``advance`` allows), else the best response goes upstream: a 6xx if any, else
  the lowest class, preferring 401, 407, 415, 420 and 484 among 4xx. A chosen 401/407
  carries the challenges of every 401/407 received; a chosen 503 becomes 500.
- A branch that times out counts as 408, a transport error as 503.
- Timer C (INVITE): on expiry a branch that had a provisional response is cancelled
  (and ends as 408 if it still says nothing after ``cancel_wait``); one that had none
  ends as 408 at once. Its later answer still counts as 408, so a caller whose callee
  never picks up gets 408, not 487.
- CANCEL from upstream: 487 for the request at once, CANCEL on every pending branch
  (a branch without a provisional response yet is cancelled when one arrives, §9.1).

Off-net trunks (``plan_for_trunks``, DESIGN §3) are groups of one tried in turn: the
next on 408, 5xx, a transport error or a timeout, and the caller gets the answer of the
trunk that ended the search, or the last failure. A trunk target with a ``timeout`` that
has neither rung (18x) nor answered finally by then is given up: cancelled at once when
it sent 100 Trying, else when it says anything (§9.1), and counted as 408. How each such
attempt ended is reported (``TrunkEnded``) for the gateway's health.

A phone registered over several flows (RFC 5626 §5.3) is one target with the other flows
as ``alternates``: when its flow fails (a 430 Flow Failed from the edge proxy, a transport
error, a timeout, or nothing at all heard back within ``flow_timeout``) the next flow
gets the request, in a new branch; the phone rings once. The flow timer is the branch's
Timer C slot, for any method; the first provisional response replaces it (Timer C
proper for INVITE, nothing for the others). A 430 with no flow left
counts as 480: a 430 is for proxies, never for the caller (RFC 5626 §11.5).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from sipfleet.core.proxy.targets import ForkPlan, Target, next_group_unless_success_or_global
from sipfleet.sip.builders import make_response, new_tag
from sipfleet.sip.message import Request, Response
from sipfleet.sip.transaction import ClientTransaction
from sipfleet.transport.base import Destination

log = logging.getLogger(__name__)
PREFERRED_4XX = (401, 407, 415, 420, 484)
FLOW_FAILED = 430  # RFC 5626: the edge proxy's flow to the phone is gone
FLOW_FAILURES = frozenset({408, 503, FLOW_FAILED})  # with a timeout and a transport error
CHALLENGES = ("www-authenticate", "proxy-authenticate")


class BranchState(Enum):
    CALLING = "calling"  # sent, nothing back yet
    PROCEEDING = "proceeding"  # a provisional response came
    DONE = "done"  # a final response, a timeout or a transport error


# C statics in the compiled build; ``BranchState.DONE`` there is a lookup in the module's
# globals and an attribute read of a Python class, and every response reads a few.
_CALLING: Final = BranchState.CALLING
_PROCEEDING: Final = BranchState.PROCEEDING
_DONE: Final = BranchState.DONE


class Branch:
    """One forwarded copy. ``request``, ``destination``, ``client`` and
    ``timer_c_delay`` are the proxy core's (``core.py``): the context never looks at
    them. A branch holds its client transaction, never the other way round."""

    __slots__ = (
        "cancel_sent",
        "cancel_wanted",
        "client",
        "destination",
        "expired",
        "index",
        "progressed",
        "request",
        "response",
        "state",
        "status",
        "target",
        "timer_c_delay",
    )

    def __init__(self, index: int, target: Target) -> None:
        self.index = index
        self.target = target
        self.state = _CALLING
        self.status = 0  # final status, incl. 408 / 503 standing for a timeout / transport error
        self.response: Response | None = None  # the final response itself, when one came
        self.cancel_wanted = False  # CANCEL as soon as a provisional response arrives
        self.cancel_sent = False
        self.expired = False  # Timer C fired
        self.progressed = False  # a provisional response other than 100 came
        self.request: Request | None = None  # the forwarded copy
        self.destination: Destination | None = None  # where it went
        self.client: ClientTransaction | None = None  # its transaction, once sent
        self.timer_c_delay: float | None = None  # Timer C asked for before it was sent

    @property
    def pending(self) -> bool:
        return self.state is not _DONE

    def __repr__(self) -> str:
        return f"<Branch {self.index} {self.state.value} {self.status or ''}>"


# The context's actions: made and read once, so plain slotted dataclasses, not frozen
# ones (see sip/transaction/actions.py).
@dataclass(slots=True)
class StartBranch:
    branch: Branch

    def __init__(self, branch: Branch) -> None:  # compiled: see actions.AskPolicy
        self.branch = branch


@dataclass(slots=True)
class CancelBranch:
    branch: Branch


@dataclass(slots=True)
class ArmTimerC:
    branch: Branch
    delay: float

    def __init__(self, branch: Branch, delay: float) -> None:  # compiled: see StartBranch
        self.branch = branch
        self.delay = delay


@dataclass(slots=True)
class DisarmTimerC:
    branch: Branch


@dataclass(slots=True)
class Upstream:
    """Send this response to the caller (through the server transaction)."""

    response: Response


@dataclass(slots=True)
class TrunkEnded:
    """The attempt on an off-net trunk (a target naming its gateway) ended with
    ``branch.status``; ``branch.progressed`` tells whether it had rung."""

    branch: Branch


@dataclass(slots=True)
class Exhausted:
    """Every branch failed; ``best`` is what would go upstream. The engine calls
    ``reroute`` or ``give_up``."""

    best: Response


ContextAction = (
    StartBranch | CancelBranch | ArmTimerC | DisarmTimerC | Upstream | Exhausted | TrunkEnded
)


class ToTag:
    """The To tag of the responses the proxy makes itself for one request, shared by the
    call and its response context: made when first asked, as most calls never need one
    (a random tag costs ~3k instructions). Holds no reference back to either: no cycle."""

    __slots__ = ("_text",)

    def __init__(self) -> None:
        self._text: str | None = None

    def text(self) -> str:
        text = self._text
        if text is None:
            text = self._text = new_tag()
        return text


class ResponseContext:
    __slots__ = (
        "_advance",
        "_ask_on_failure",
        "_group_start",
        "_last_group_answers",
        "_queued",
        "_tag",
        "branches",
        "cancel_wait",
        "final_sent",
        "flow_timeout",
        "invite",
        "request",
        "timer_c",
    )

    def __init__(
        self,
        request: Request,
        *,
        timer_c: float = 180.0,
        cancel_wait: float = 32.0,
        ask_on_failure: bool = False,
        to_tag: str | ToTag = "",
        flow_timeout: float = 4.0,
    ) -> None:
        """``request``: as received (its Vias are the upstream ones). ``to_tag``: for the
        responses the context makes itself (408, 487, 500), or the call's ``ToTag``,
        asked when the first of them is made. ``flow_timeout``: how long a
        request waits for any answer over a flow that has alternates."""
        self.request = request
        self.invite = request.method == "INVITE"
        self.timer_c = timer_c
        self.cancel_wait = cancel_wait
        self.flow_timeout = flow_timeout
        self.branches: list[Branch] = []
        self.final_sent = False
        self._queued: deque[tuple[Target, ...]] = deque()
        # ForkPlan's default, until start() sets the plan's
        self._advance: Callable[[int], bool] = next_group_unless_success_or_global
        self._last_group_answers = False
        self._group_start = 0  # index of the first branch of the group started last
        self._ask_on_failure = ask_on_failure
        self._tag = to_tag

    # -- starting ---------------------------------------------------------------------
    def start(self, plan: ForkPlan) -> list[ContextAction]:
        """Fork per ``plan``: its first group now, the others as the failures allow."""
        self._queued = deque(plan.groups)
        self._advance = plan.advance
        self._last_group_answers = plan.last_group_answers
        return self._next_group()

    def reroute(self, plan: ForkPlan) -> list[ContextAction]:
        """After ``Exhausted``: the policy gave new targets."""
        if self.final_sent:
            return []
        return self.start(plan)

    def give_up(self, best: Response) -> list[ContextAction]:
        """After ``Exhausted``: send the best response after all."""
        if self.final_sent:
            return []
        self.final_sent = True
        return [Upstream(best)]

    def _next_group(self) -> list[ContextAction]:
        group: tuple[Target, ...] = ()
        while not group:
            if not self._queued:
                return self._finish()
            group = self._queued.popleft()
        actions: list[ContextAction] = []
        self._group_start = len(self.branches)
        for target in group:
            actions.extend(self._branch_to(target))
        return actions

    def _branch_to(self, target: Target) -> list[ContextAction]:
        branch = Branch(len(self.branches), target)
        self.branches.append(branch)
        if not self.invite:
            if target.alternates:  # a flow saying nothing in time: the next one
                return [StartBranch(branch), ArmTimerC(branch, self.flow_timeout)]
            return [StartBranch(branch)]
        return [StartBranch(branch), ArmTimerC(branch, self.timer_c_for(target))]

    def timer_c_for(self, target: Target) -> float:
        """An INVITE branch's Timer C: the proxy's, or the trunk's time when shorter, or
        a flow's time to say anything when the phone has another flow."""
        delay = self.timer_c
        if target.timeout is not None and target.timeout < delay:
            delay = target.timeout
        if target.alternates and self.flow_timeout < delay:
            delay = self.flow_timeout
        return delay

    # -- events -----------------------------------------------------------------------
    def on_response(self, branch: Branch, response: Response) -> list[ContextAction]:
        """A response on ``branch`` (our Via already removed)."""
        status = response.status
        if status < 200:
            return self._provisional(branch, response)
        if status < 300:
            return self._success(branch, response)
        if branch.state is _DONE:
            return []  # a late answer of a branch already counted (Timer C, CANCEL)
        branch.response = response
        if status == FLOW_FAILED:
            return self._flow_failed(branch, status)
        return self._failed(branch, 408 if branch.expired else status)

    def on_failure(self, branch: Branch, status: int) -> list[ContextAction]:
        """The branch's transaction timed out (408) or could not send (503)."""
        if branch.state is _DONE:
            return []
        return self._flow_failed(branch, status)

    def on_timer_c(self, branch: Branch) -> list[ContextAction]:
        if branch.state is _DONE:
            return []
        if branch.target.alternates and branch.state is _CALLING:
            branch.cancel_wanted = True  # the flow said nothing: should it answer after all
            return self._flow_failed(branch, 408)
        if branch.target.timeout is not None and not branch.progressed:
            # a trunk that has not rung in time: cancel it (now if it sent 100 Trying,
            # else should it still answer) and go on to the next trunk without waiting
            actions = self._cancel(branch)
            actions.extend(self._failed(branch, 408))
            return actions
        if branch.expired or branch.state is _CALLING:
            branch.cancel_wanted = True  # should it answer later after all
            return self._failed(branch, 408)
        branch.expired = True
        actions = self._cancel(branch)
        actions.append(ArmTimerC(branch, self.cancel_wait))
        return actions

    def cancel(self) -> list[ContextAction]:
        """CANCEL from upstream (§16.10): 487 now, cancel what is pending."""
        if self.final_sent:
            return []
        self.final_sent = True
        self._queued.clear()
        actions: list[ContextAction] = [Upstream(self._make(487))]
        actions.extend(self._cancel_pending())
        return actions

    # -- the rules ----------------------------------------------------------------------
    def _provisional(self, branch: Branch, response: Response) -> list[ContextAction]:
        actions: list[ContextAction] = []
        if branch.state is _CALLING:
            branch.state = _PROCEEDING
            if branch.target.alternates and not branch.expired:  # the flow works
                actions.append(
                    ArmTimerC(branch, self.timer_c) if self.invite else DisarmTimerC(branch)
                )
        if branch.cancel_wanted and not branch.cancel_sent:
            actions.extend(self._cancel(branch))
        if branch.state is _DONE or response.status == 100:
            return actions
        branch.progressed = True
        if self.invite and not branch.expired:
            actions.append(ArmTimerC(branch, self.timer_c))
        if not self.final_sent:
            actions.append(Upstream(response))
        return actions

    def _success(self, branch: Branch, response: Response) -> list[ContextAction]:
        actions: list[ContextAction] = [Upstream(response)]  # every 2xx, always (§16.7 step 5)
        if branch.state is not _DONE:
            branch.state = _DONE
            branch.status = response.status
            branch.response = response
            if self.invite:
                actions.append(DisarmTimerC(branch))
            if branch.target.gateway is not None:
                actions.append(TrunkEnded(branch))
        if not self.final_sent:
            self.final_sent = True
            self._queued.clear()
            if self.invite:
                actions.extend(self._cancel_pending())
        return actions

    def _failed(self, branch: Branch, status: int) -> list[ContextAction]:
        branch.state = _DONE
        branch.status = status
        actions: list[ContextAction] = [DisarmTimerC(branch)] if self.invite else []
        if branch.target.gateway is not None:
            actions.append(TrunkEnded(branch))
        if status >= 600 and self.invite and not self.final_sent:
            self._queued.clear()
            actions.extend(self._cancel_pending())
        if self.final_sent or any(b.pending for b in self.branches):
            return actions
        if self._queued and self._advance(self._group_status()):
            actions.extend(self._next_group())
            return actions
        actions.extend(self._finish())
        return actions

    def _flow_failed(self, branch: Branch, status: int) -> list[ContextAction]:
        """RFC 5626 §5.3: a flow that failed hands the request to the phone's next flow;
        with none left a 430 counts as 480."""
        if not branch.target.alternates or self.final_sent or status not in FLOW_FAILURES:
            return self._failed(branch, 480 if status == FLOW_FAILED else status)
        branch.state = _DONE
        branch.status = 480 if status == FLOW_FAILED else status
        actions: list[ContextAction] = [DisarmTimerC(branch)]  # its Timer C or flow timer
        following = branch.target.next_flow()
        log.info(
            "%s %s: flow %s failed (%d); trying the phone's next flow %s",
            self.request.method,
            self.request.call_id,
            _flow_name(branch.target),
            status,
            _flow_name(following),
        )
        actions.extend(self._branch_to(following))
        return actions

    def _finish(self) -> list[ContextAction]:
        if self.final_sent:
            return []
        best = self.best_response()
        if self._ask_on_failure:
            return [Exhausted(best)]
        self.final_sent = True
        return [Upstream(best)]

    def _cancel_pending(self) -> list[ContextAction]:
        actions: list[ContextAction] = []
        for other in self.branches:
            if other.pending:
                actions.extend(self._cancel(other))
        return actions

    def _cancel(self, branch: Branch) -> list[ContextAction]:
        """CANCEL only after a provisional response (§9.1); until then, remember."""
        if branch.cancel_sent or not self.invite:
            return []
        if branch.state is _CALLING:
            branch.cancel_wanted = True
            return []
        branch.cancel_sent = True
        return [CancelBranch(branch)]

    # -- choosing the answer (§16.7 step 6-7) -----------------------------------------------
    def _group_status(self) -> int:
        """The best status of the group started last: whether to go on to the next."""
        group = self.branches[self._group_start :]
        return best_status([b.status for b in group if b.status >= 300])

    def best_response(self) -> Response:
        """§16.7 step 6 over every branch, or over the last group only for trunks."""
        considered = (
            self.branches[self._group_start :] if self._last_group_answers else self.branches
        )
        finals = [b for b in considered if b.status >= 300]
        if not finals:
            return self._make(408)  # no target at all: nothing answered
        status = best_status([b.status for b in finals])
        chosen = next(b for b in finals if b.status == status)
        response = chosen.response  # None, or not the status, when it stands for a timeout
        if response is None or response.status != status:
            return self._make(status)
        if status == 503:  # §16.7 step 6: never pass a 503 upstream
            return self._make(500, "Service Unavailable Downstream")
        if status in (401, 407):
            _gather_challenges(response, [b.response for b in finals if b.response is not None])
        return response

    def _make(self, status: int, reason: str | None = None) -> Response:
        if status == 503:
            status, reason = 500, "Service Unavailable Downstream"
        tag = self._tag
        text = tag if isinstance(tag, str) else tag.text()
        return make_response(self.request, status, reason, to_tag=text or None)


def _flow_name(target: Target) -> str:
    """A flow in the log: its Path (the LB and the flow token), else its Contact."""
    return target.routes[0] if target.routes else target.uri or "?"


def best_status(statuses: list[int]) -> int:
    """§16.7 step 6 on status codes (callers pass only 3xx-6xx)."""
    if not statuses:
        return 408
    globals_ = [s for s in statuses if s >= 600]
    if globals_:
        return globals_[0]
    lowest_class = min(s // 100 for s in statuses)
    in_class = [s for s in statuses if s // 100 == lowest_class]
    if lowest_class == 4:
        for preferred in PREFERRED_4XX:
            if preferred in in_class:
                return preferred
    return in_class[0]


def _gather_challenges(chosen: Response, responses: list[Response]) -> None:
    """§16.7 step 7: the chosen 401/407 carries every challenge of every 401/407."""
    for other in responses:
        if other is chosen or other.status not in (401, 407):
            continue
        for name in CHALLENGES:
            for value in other.header_lines(name):
                if value not in chosen.header_lines(name):
                    chosen.add_header(name, value)
