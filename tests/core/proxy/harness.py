"""A fake shell for ``ProxyCore``: records what it sends, keeps its timers on a fake
clock, and lets a test answer the policy and the resolver. No sockets, no event loop.

``RoutedShell`` is the same fake shell around the core ``build_engine`` makes from a
configuration, answering ``AskPolicy`` with the real policy and plan (the location
table, authentication, the LCR) over a temporary SQLite database: still no sockets, and
timers on the fake clock; only the database calls are awaited."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from sipfleet.config import Config, config_from_dict
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.actions import (
    Answered,
    AskPolicy,
    CallResult,
    ProxyAction,
    Resolve,
    Transmit,
    TrunkOutcome,
)
from sipfleet.core.proxy.core import (
    CallSettings,
    EngineSettings,
    Listening,
    ProxyCore,
)
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.targets import ForkPlan, Target
from sipfleet.roles.proxy import build_engine
from sipfleet.routing.api import CallServices, OffNetRouter, Reply
from sipfleet.routing.lcr_cache import LcrCache
from sipfleet.routing.lcr_router import LcrRouter, LcrSettings
from sipfleet.sip import Message, Request, Response, parse_message
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.sip.digest import compute_ha1
from sipfleet.sip.transaction import CancelTimer, Send, StartTimer, Timer, Timers, Transaction
from sipfleet.storage import Aor, BindingUpdate, Storage, Subscriber, open_storage
from sipfleet.storage.dsn import Dsn
from sipfleet.storage.lcr_rows import LcrRows
from sipfleet.storage.migrate import upgrade
from sipfleet.transport.base import Destination, Peer

PROXY_HOST, PROXY_PORT = "192.0.2.1", 5060
CALLER = Peer("udp", "198.51.100.7", 5062, PROXY_HOST, PROXY_PORT)
T1 = 0.5
TIMER_C = 180.0
SECRET = b"core-test-secret"
DOMAIN = "example.com"


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
        core: ProxyCore | None = None,
        **settings: Any,
    ) -> None:
        if core is None:
            calls = CallSettings(timer_c=timer_c, cancel_wait=64 * T1)
            core = ProxyCore(
                cast(CallServices, object()),  # the core only hands it to the policy
                EngineSettings(timers=Timers(t1=T1), calls=calls, **settings),
                hooks=hooks,
                dialog_tokens=DialogTokens(SECRET),
                ask_on_failure=ask_on_failure,
            )
        self.core = core
        self.core.listen(Listening(((transport, PROXY_HOST, PROXY_PORT),)))  # type: ignore[arg-type]
        self.now = 0.0
        self.timers: dict[tuple[Transaction, Timer], float] = {}
        self.sent: list[tuple[Message, Destination]] = []
        self.asked: list[AskPolicy] = []
        self.resolves: list[Resolve] = []
        self.results: list[CallResult] = []  # for the call records (test_core_media.py)
        self.answered: list[str] = []  # the methods answered, in order (a metric)
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
            elif isinstance(action, CallResult):
                self.results.append(action)
            elif isinstance(action, Answered):
                self.answered.append(action.method)
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


# -- the real routing over SQLite ---------------------------------------------------------------
def make_config(*, sip: dict[str, Any] | None = None, **proxy: Any) -> Config:
    """The proxy's configuration: our domain, T1 = 0.5 s, Timer C = 180 s (the fake clock
    makes them free), no authentication unless asked."""
    return config_from_dict(
        {
            "node": {"cluster_secret": SECRET.decode()},
            "sip": {
                "domains": [DOMAIN],
                "t1_ms": int(T1 * 1000),
                "timer_c_s": int(TIMER_C),
                "auth_algorithms": ["MD5"],
                **(sip or {}),
            },
            "proxy": {"authenticate": False, **proxy},
        }
    )


async def open_database(path: Path) -> Storage:
    """A migrated SQLite database with subscribers alice (password "secret"), bob, carol."""
    dsn = f"sqlite:///{path}"
    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    await storage.subscribers.add(
        Subscriber(
            "alice",
            DOMAIN,
            compute_ha1("alice", DOMAIN, "secret", "MD5"),
            compute_ha1("alice", DOMAIN, "secret", "SHA-256"),
        )
    )
    for user in ("bob", "carol"):
        await storage.subscribers.add(Subscriber(user, DOMAIN, "0" * 32, "0" * 64))
    return storage


async def bind(storage: Storage, user: str, *contacts: str, q: float | None = None) -> None:
    """Register ``contacts`` for ``user`` (the location table, valid ten minutes)."""
    now = int(time.time())
    updates = [BindingUpdate(c, now + 600, f"reg-{user}", 1, q=q) for c in contacts]
    await storage.location.save(Aor(user, DOMAIN), updates, now=now, max_contacts=10)


class RoutedShell(FakeShell):
    """The fake shell around the core ``build_engine`` makes (its settings, hooks and
    dialog tokens from ``config``), routing with the real policy and planner."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        *,
        hooks: MessageHooks = NO_HOOKS,
        off_net: OffNetRouter | None = None,
        host: str = PROXY_HOST,
    ) -> None:
        """``host``: the proxy's address (port ``PROXY_PORT``), UDP and TCP."""
        engine = build_engine(config, storage, SipEndpoint([]), hooks=hooks, off_net=off_net)
        super().__init__(core=engine.core)
        addresses = (("udp", host, PROXY_PORT), ("tcp", host, PROXY_PORT))
        self.core.listen(Listening(addresses))  # type: ignore[arg-type]
        self.policy, self.planner = engine.policy, engine.planner

    def run(self, actions: list[ProxyAction]) -> None:
        super().run(actions)
        router = self.planner.off_net
        if router is not None:  # gateway health, as the engine reports it
            for action in self.other:
                if isinstance(action, TrunkOutcome):
                    router.trunk_ended(action.gateway, action.status, action.progressed)
            self.other = [a for a in self.other if not isinstance(a, TrunkOutcome)]

    async def decide(self) -> None:
        """Answer every ``AskPolicy`` as the engine does: the policy (or its failure
        hook), then the plan. Errors propagate: the engine's mapping of them to 503/500
        is the shell's, tested in test_engine."""
        while self.asked:
            ask = self.asked.pop(0)
            if ask.failed is None:
                decision = await self.policy.route(ask.context)
            else:
                found = await self.policy.on_failure(ask.context, ask.failed)
                if found is None:
                    self.run(self.core.routed(ask.call, None))
                    continue
                decision = found
            self.run(self.core.routed(ask.call, await self.planner.plan(decision, ask.context)))

    async def receive_routed(self, message: Message, peer: Peer = CALLER) -> None:
        """``receive``, then route what it asked for."""
        self.receive(message, peer)
        await self.decide()


async def off_net_shell(config: Config, storage: Storage, rows: LcrRows) -> RoutedShell:
    """A routed shell whose off-net router is an ``LcrRouter`` over ``rows``, on the
    shell's fake clock (its gateway health too); ``planner.off_net`` is the router.
    Not started: no reload or health ticker, a test calls ``tick`` itself."""
    await storage.lcr.replace_all(rows)
    settings = LcrSettings.from_config(config)
    router = LcrRouter(LcrCache(storage.lcr, reload_interval=settings.reload_interval), settings)
    await router.cache.reload()
    shell = RoutedShell(config, storage, off_net=router)
    router.clock = lambda: shell.now
    return shell
