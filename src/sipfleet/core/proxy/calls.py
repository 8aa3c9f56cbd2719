"""Routing one request statefully: ask the policy, plan the targets, fork, and carry out
what the response context decides.

A ``Call`` is one server transaction of the proxy (an INVITE, a BYE, a MESSAGE ...).
Its routing runs as a task because the policy and the location lookup wait on the
database; everything after (branch responses, timers, CANCEL) runs in callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.context import (
    ArmTimerC,
    Branch,
    CancelBranch,
    ContextAction,
    DisarmTimerC,
    Exhausted,
    ResponseContext,
    StartBranch,
    TrunkEnded,
    Upstream,
)
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.plans import Planner
from sipfleet.core.proxy.sender import BranchSender
from sipfleet.core.proxy.shell import TransactionShell
from sipfleet.core.proxy.targets import ForkPlan
from sipfleet.routing.api import CallContext, Reply, RoutingPolicy
from sipfleet.sip.builders import make_response, new_tag
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Response
from sipfleet.sip.transaction import ServerTransaction, TransactionLayer
from sipfleet.storage.errors import StorageOverloaded, StorageUnavailable

log = logging.getLogger(__name__)
Header = tuple[str, str]
MAX_REROUTES = 3  # failure-hook rounds per call: a policy cannot keep a call forever
DB_WARNING_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class CallSettings:
    timer_c: float = 180.0
    cancel_wait: float = 32.0  # after cancelling a branch on Timer C: 64*T1
    record_route: bool = True  # Record-Route dialog-creating requests
    retry_after: int = 5


DEFAULT_CALL_SETTINGS = CallSettings()


class Call:
    """A request handled statefully, from its server transaction to its final answer."""

    __slots__ = (
        "_tag",
        "cancelled",
        "context",
        "ctx",
        "finished",
        "loop_hash",
        "reroutes",
        "server",
    )

    def __init__(self, server: ServerTransaction, ctx: CallContext, loop_hash: str) -> None:
        self.server = server
        self.ctx = ctx
        self.loop_hash = loop_hash
        self.context: ResponseContext | None = None
        self.cancelled = False
        self.finished = False  # a final response went upstream
        self.reroutes = 0
        self._tag: str | None = None

    @property
    def to_tag(self) -> str:
        """The To tag of the responses the proxy makes itself for this request."""
        if self._tag is None:
            self._tag = new_tag()
        return self._tag


class CallRunner:
    def __init__(
        self,
        *,
        endpoint: SipEndpoint,
        layer: TransactionLayer,
        shell: TransactionShell,
        policy: RoutingPolicy,
        planner: Planner,
        settings: CallSettings,
        hooks: MessageHooks = NO_HOOKS,
        dialog_tokens: DialogTokens,
    ) -> None:
        self.endpoint = endpoint
        self.layer = layer
        self.shell = shell
        self.policy = policy
        self.planner = planner
        self.settings = settings
        self.hooks = hooks
        self.tasks: set[asyncio.Task[None]] = set()
        self.active = 0  # calls without a final response yet
        self._db_errors = 0
        self._db_warned_at = -DB_WARNING_INTERVAL_S
        self.sender = BranchSender(
            endpoint=endpoint,
            layer=layer,
            shell=shell,
            hooks=hooks,
            record_route=settings.record_route,
            dialog_tokens=dialog_tokens,
            spawn=self.spawn,
            unreachable=self._branch_unreachable,
        )

    # -- starting ---------------------------------------------------------------------------
    def begin(self, call: Call) -> None:
        """Route ``call`` (counted in ``active`` by whoever made it)."""
        self.spawn(self._route(call))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task (kept here so it is not collected while it waits).

        Not started eagerly by hand: code below the policy may need a current task
        (``asyncio.timeout`` in the database drivers does)."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _route(self, call: Call) -> None:
        try:
            decision = await self.policy.route(call.ctx)
            outcome = await self.planner.plan(decision, call.ctx)
        except Exception as exc:
            self._reply_error(call, exc)
            return
        if call.cancelled:
            return
        if isinstance(outcome, Reply):
            self.reply(call, outcome.status, outcome.reason, outcome.headers)
        else:
            self.fork(call, outcome)

    def _reply_error(self, call: Call, exc: Exception) -> None:
        if isinstance(exc, StorageUnavailable):
            self._database_trouble(exc)
            retry = (("Retry-After", str(self.settings.retry_after)),)
            reason = "Overloaded" if isinstance(exc, StorageOverloaded) else "Database Unavailable"
            self.reply(call, 503, reason, retry)
        elif isinstance(exc, ParseError):
            self.reply(call, exc.status, exc.reason)
        else:
            log.error("routing %r failed", call.server.request, exc_info=exc)
            self.reply(call, 500, "Server Internal Error")

    def _database_trouble(self, exc: StorageUnavailable) -> None:
        """One warning per interval, however many requests it costs: an outage must
        not turn into a log flood."""
        self._db_errors += 1
        now = time.monotonic()
        if now - self._db_warned_at >= DB_WARNING_INTERVAL_S:
            log.warning("database: %s (%d requests answered 503)", exc, self._db_errors)
            self._db_warned_at = now
            self._db_errors = 0

    def reply(
        self, call: Call, status: int, reason: str | None = None, headers: Sequence[Header] = ()
    ) -> None:
        self._upstream(call, self._response(call, status, reason, headers))

    @staticmethod
    def _response(
        call: Call, status: int, reason: str | None, headers: Sequence[Header]
    ) -> Response:
        request = call.server.request
        return make_response(request, status, reason, to_tag=call.to_tag, headers=[*headers])

    def fork(self, call: Call, plan: ForkPlan) -> None:
        context = ResponseContext(
            call.ctx.request,
            timer_c=self.settings.timer_c,
            cancel_wait=self.settings.cancel_wait,
            ask_on_failure=self.policy.handles_failure,
            to_tag=call.to_tag,
        )
        call.context = context
        call.ctx.extra_headers = list(plan.headers)
        self.apply(call, context.start(plan))

    def cancel(self, call: Call) -> None:
        """CANCEL from upstream for this call's INVITE."""
        if call.context is not None:
            self.apply(call, call.context.cancel())
        elif not call.finished:
            call.cancelled = True
            self.reply(call, 487, "Request Terminated")

    # -- the response context's actions -------------------------------------------------------
    def apply(self, call: Call, actions: list[ContextAction]) -> None:
        for action in actions:
            if isinstance(action, Upstream):
                self._upstream(call, action.response)
            elif isinstance(action, StartBranch):
                self.sender.start(call, action.branch)
            elif isinstance(action, ArmTimerC):
                self._arm_timer_c(call, action.branch, action.delay)
            elif isinstance(action, DisarmTimerC):
                _disarm(action.branch)
            elif isinstance(action, CancelBranch):
                self.sender.cancel(action.branch)
            elif isinstance(action, Exhausted):
                self._exhausted(call, action.best)
            elif isinstance(action, TrunkEnded):
                self._trunk_ended(action.branch)

    def _upstream(self, call: Call, response: Response) -> None:
        if response.status >= 200 and not call.finished:
            call.finished = True
            self.active -= 1
        self.hooks.answering(response, call.ctx)
        self.shell.execute(call.server.respond(response))

    def _arm_timer_c(self, call: Call, branch: Branch, delay: float) -> None:
        """(Re)start Timer C. Each 18x restarts it; rather than a new loop timer per
        provisional response, the armed one re-arms itself for what is left."""
        loop = asyncio.get_running_loop()
        branch.deadline = loop.time() + delay
        if branch.timer is not None and branch.timer.when() <= branch.deadline:
            return
        _disarm(branch)
        branch.timer = loop.call_at(branch.deadline, self._timer_c_fired, call, branch)

    def _timer_c_fired(self, call: Call, branch: Branch) -> None:
        loop = asyncio.get_running_loop()
        if branch.deadline > loop.time() + 0.001:
            branch.timer = loop.call_at(branch.deadline, self._timer_c_fired, call, branch)
            return
        branch.timer = None
        if call.context is not None:
            self.apply(call, call.context.on_timer_c(branch))

    def _exhausted(self, call: Call, best: Response) -> None:
        context = call.context
        assert context is not None
        if call.reroutes >= MAX_REROUTES:
            self.apply(call, context.give_up(best))
            return
        call.reroutes += 1
        self.spawn(self._ask_policy(call, context, best))

    async def _ask_policy(self, call: Call, context: ResponseContext, best: Response) -> None:
        try:
            decision = await self.policy.on_failure(call.ctx, best)
            outcome = None if decision is None else await self.planner.plan(decision, call.ctx)
        except Exception as exc:
            log.warning("failure hook of %r: %r", call.server.request, exc)
            outcome = None
        if outcome is None:
            self.apply(call, context.give_up(best))
        elif isinstance(outcome, Reply):
            answer = self._response(call, outcome.status, outcome.reason, outcome.headers)
            self.apply(call, context.give_up(answer))
        else:
            call.ctx.extra_headers = list(outcome.headers)
            self.apply(call, context.reroute(outcome))

    def _trunk_ended(self, branch: Branch) -> None:
        """Tell the off-net router how the attempt on a gateway ended (its health)."""
        router = self.planner.off_net
        gateway = branch.target.gateway
        if router is None or gateway is None:
            return
        try:
            router.trunk_ended(gateway, branch.status, branch.progressed)
        except Exception:
            log.exception("off-net router: trunk_ended(%r) failed", gateway)

    def _branch_unreachable(self, call: Call, branch: Branch, status: int) -> None:
        if call.context is not None:
            self.apply(call, call.context.on_failure(branch, status))

    # -- the client transactions' events ----------------------------------------------------------
    def branch_response(self, call: Call, branch: Branch, response: Response) -> None:
        response.pop_first_value("via")  # ours; what is left is the caller's
        if call.context is not None:
            self.apply(call, call.context.on_response(branch, response))

    def branch_failed(self, call: Call, branch: Branch, status: int) -> None:
        if call.context is not None:
            self.apply(call, call.context.on_failure(branch, status))


def _disarm(branch: Branch) -> None:
    if branch.timer is not None:
        branch.timer.cancel()
        branch.timer = None
