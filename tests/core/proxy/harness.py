"""A fake shell for ``ProxyCore``: records what it sends, keeps its timers on a fake
clock, and lets a test answer the policy and the resolver. No sockets, no event loop."""

from __future__ import annotations

from typing import Any, cast

from sipfleet.core.proxy.actions import AskPolicy, ProxyAction, Resolve, Transmit
from sipfleet.core.proxy.core import (
    CallSettings,
    EngineSettings,
    Listening,
    ProxyCore,
)
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.targets import ForkPlan, Target
from sipfleet.routing.api import CallServices, Reply
from sipfleet.sip import Message, Request, Response, parse_message
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.sip.transaction import CancelTimer, Send, StartTimer, Timer, Timers, Transaction
from sipfleet.transport.base import Destination, Peer

PROXY_HOST, PROXY_PORT = "192.0.2.1", 5060
CALLER = Peer("udp", "198.51.100.7", 5062, PROXY_HOST, PROXY_PORT)
T1 = 0.5
TIMER_C = 180.0
SECRET = b"core-test-secret"


def wire(message: Message) -> Any:
    """``message`` as the other side receives it: serialized and parsed again."""
    return parse_message(message.serialize())


class FakeShell:
    def __init__(
        self,
        *,
        timer_c: float = TIMER_C,
        hooks: MessageHooks = NO_HOOKS,
        ask_on_failure: bool = False,
        transport: str = "udp",
        **settings: Any,
    ) -> None:
        calls = CallSettings(timer_c=timer_c, cancel_wait=64 * T1)
        self.core = ProxyCore(
            cast(CallServices, object()),  # the core only hands it to the policy
            EngineSettings(timers=Timers(t1=T1), calls=calls, **settings),
            hooks=hooks,
            dialog_tokens=DialogTokens(SECRET),
            ask_on_failure=ask_on_failure,
        )
        self.core.listen(Listening(((transport, PROXY_HOST, PROXY_PORT),)))  # type: ignore[arg-type]
        self.now = 0.0
        self.timers: dict[tuple[Transaction, Timer], float] = {}
        self.sent: list[tuple[Message, Destination]] = []
        self.asked: list[AskPolicy] = []
        self.resolves: list[Resolve] = []
        self.other: list[ProxyAction] = []

    # -- running the core's actions ---------------------------------------------------------
    def run(self, actions: list[ProxyAction]) -> None:
        for action in actions:
            if isinstance(action, Send):
                peer = action.transaction.peer
                assert isinstance(peer, Destination)
                self.sent.append((wire(action.message), peer))
            elif isinstance(action, StartTimer):
                self.timers[action.transaction, action.timer] = self.now + action.delay
            elif isinstance(action, CancelTimer):
                self.timers.pop((action.transaction, action.timer), None)
            elif isinstance(action, Transmit):
                self.sent.append((wire(action.message), action.destination))
            elif isinstance(action, AskPolicy):
                self.asked.append(action)
            elif isinstance(action, Resolve):
                self.resolves.append(action)
            else:
                self.other.append(action)

    def advance(self, seconds: float) -> None:
        """Move the fake clock, firing every timer that falls due, in order."""
        end = self.now + seconds
        while True:
            due = [(when, key) for key, when in self.timers.items() if when <= end]
            if not due:
                break
            when, key = min(due, key=lambda pair: pair[0])
            del self.timers[key]
            self.now = when
            self.run(self.core.timer_fired(*key))
        self.now = end

    # -- events -------------------------------------------------------------------------------
    def receive(self, message: Message, peer: Peer = CALLER) -> None:
        parsed = wire(message)
        if isinstance(parsed, Request):
            self.run(self.core.request(parsed, peer))
        else:
            self.run(self.core.response(parsed, peer))

    def route(
        self, *uris: str | Target, serial: bool = False, plan: ForkPlan | None = None
    ) -> None:
        """Answer the oldest ``AskPolicy`` with these targets (one group, or one each)."""
        ask = self.asked.pop(0)
        if plan is None:
            targets = tuple(Target(u) if isinstance(u, str) else u for u in uris)
            groups = tuple((t,) for t in targets) if serial else (targets,)
            plan = ForkPlan(groups)
        self.run(self.core.routed(ask.call, plan))

    def reply(self, status: int, reason: str | None = None) -> None:
        ask = self.asked.pop(0)
        self.run(self.core.routed(ask.call, Reply(status, reason)))

    # -- what was sent ------------------------------------------------------------------------
    def take(self) -> list[tuple[Message, Destination]]:
        sent, self.sent = self.sent, []
        return sent

    def upstream(self) -> list[int]:
        """Statuses of the responses sent (and forgotten) since the last look."""
        kept, statuses = [], []
        for message, destination in self.sent:
            if isinstance(message, Response):
                statuses.append(message.status)
            else:
                kept.append((message, destination))
        self.sent = kept
        return statuses

    def downstream(self, method: str | None = None) -> list[Request]:
        """Requests sent (and forgotten) since the last look, of ``method`` if given."""
        kept, requests = [], []
        for message, destination in self.sent:
            if isinstance(message, Request) and method in (None, message.method):
                requests.append(message)
            else:
                kept.append((message, destination))
        self.sent = kept
        return requests
