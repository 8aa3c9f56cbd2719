"""The asyncio shell of the proxy core: the endpoint's handler, and nothing but I/O.

Messages from the endpoint go into ``ProxyCore`` (``core.py``, sans-IO RFC 3261 §16);
its actions come out here and are carried out: sends (a failure fed back as
``send_failed``, 513 when too large for a datagram), timers (one system: the
transaction timers and Timer C), the policy and the plan in a task (fed back as
``routed``), host names resolved in a task (``resolved``), stateless forwarding of 2xx
ACKs and stray 2xx, trunk outcomes to the off-net router, stray answers to the prober.

Overload: while datagrams pile up unread or the loop lags (``overload.py``) the core
sheds new requests; the watch runs here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any, Final

from sipfleet.config import Config
from sipfleet.core.endpoint import COUNTED_METHODS, SipEndpoint, count_request
from sipfleet.core.overload import OverloadMonitor, no_backlog, watch
from sipfleet.core.proxy.accounting import CallAccounting
from sipfleet.core.proxy.actions import (
    Answered,
    AskPolicy,
    CallResult,
    DestinationDown,
    EndMedia,
    ForwardAck,
    ForwardResponse,
    Outcome,
    ProxyAction,
    RelayMedia,
    Resolve,
    Transmit,
    TrunkOutcome,
    Unmatched,
)
from sipfleet.core.proxy.core import (
    CallSettings,
    EngineSettings,
    EngineStats,
    Listening,
    ProxyCore,
)
from sipfleet.core.proxy.fastack import FastAcks
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.media_control import MediaControl
from sipfleet.core.proxy.plans import Planner
from sipfleet.core.proxy.probes import OptionsProber
from sipfleet.core.proxy.resolve import ResolveError, Resolver
from sipfleet.core.proxy.services import ProxyServices
from sipfleet.core.proxy.targets import ForkPlan
from sipfleet.core.stateless import StatelessForwarder
from sipfleet.routing.api import Reply, RoutingPolicy
from sipfleet.sip import ParseError, Request, Response
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.sip.message import Message
from sipfleet.sip.transaction import CancelTimer, Send, StartTimer, Timer, Timers, Transaction
from sipfleet.stats import TRANSACTION_BUCKETS, HistogramTable
from sipfleet.storage.errors import StorageOverloaded, StorageUnavailable
from sipfleet.transport.base import Destination, MessageTooLarge, Peer, TransportError
from sipfleet.transport.sockets import normalise_host

__all__ = ["EngineSettings", "EngineStats", "ProxyEngine", "settings_from_config"]

log = logging.getLogger(__name__)
COARSE_FROM_S: Final = 1.0  # timers this long or longer may fire up to one resolution late
COARSE_RESOLUTION_S: Final = 0.1
DB_WARNING_INTERVAL_S = 10.0
TimerKey = tuple[Transaction, Timer]
# The transaction layer's actions are interpreted classes (sip/transaction/actions.py): a
# Final alias is a C static in the compiled build, a plain name a lookup in this module's
# globals, for each test of each action (and every native action is tested against these
# first).
_SEND: Final = Send
_START_TIMER: Final = StartTimer
_CANCEL_TIMER: Final = CancelTimer


def settings_from_config(config: Config) -> EngineSettings:
    sip, proxy = config.sip, config.proxy
    timers = Timers(t1=sip.t1_ms / 1000, t2=sip.t2_ms / 1000, t4=sip.t4_ms / 1000)
    calls = CallSettings(
        timer_c=float(sip.timer_c_s),
        cancel_wait=timers.timeout,
        flow_timeout=proxy.flow_timeout_s,
        record_route=proxy.record_route,
        retry_after=proxy.retry_after_s,
    )
    return EngineSettings(
        timers=timers,
        calls=calls,
        max_transactions=sip.max_transactions,
        max_routing=proxy.max_routing,
        trusted_lbs=frozenset(normalise_host(host) for host in proxy.trusted_lbs),
        aliases=tuple(proxy.aliases),
    )


class ProxyEngine:
    def __init__(
        self,
        endpoint: SipEndpoint,
        policy: RoutingPolicy,
        planner: Planner,
        services: ProxyServices,
        settings: EngineSettings | None = None,
        hooks: MessageHooks = NO_HOOKS,
        backlog: Callable[[], int] = no_backlog,
        dialog_tokens: DialogTokens | None = None,
        media: MediaControl | None = None,
        accounting: CallAccounting | None = None,
    ) -> None:
        """``backlog``: bytes waiting in the listening sockets (``overload.receive_backlog``);
        ``dialog_tokens``: from the cluster secret (None: a secret of this process alone);
        ``media``: the media relays (None: media goes direct); ``accounting``: where call
        records go (None: none are written)."""
        self.endpoint = endpoint
        self.policy = policy
        self.planner = planner
        self.core = ProxyCore(
            services,
            settings,
            hooks=hooks,
            dialog_tokens=dialog_tokens,
            overload=OverloadMonitor(),
            ask_on_failure=policy.handles_failure,
        )
        self.forwarder = StatelessForwarder(endpoint)
        self.resolver = Resolver()
        # OPTIONS to gateways for the off-net router's health checks
        self.prober = OptionsProber(endpoint, self.resolver)
        self.media = media
        self._accounting: CallAccounting | None = None
        self.accounting = accounting
        self.durations = HistogramTable(TRANSACTION_BUCKETS)  # by method
        self.tasks: set[asyncio.Task[None]] = set()
        self._backlog = backlog
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # each armed timer: its loop handle, or the coarse slot it waits in
        self._timers: dict[TimerKey, asyncio.TimerHandle | int] = {}
        self._slots: dict[int, list[TimerKey]] = {}
        self._db_errors = 0
        self._db_warned_at = -DB_WARNING_INTERVAL_S
        self._siblings: tuple[str, ...] = ()  # the proxy pool's members
        # The usual 2xx ACK sent on from its bytes (core/proxy/fastack.py): the endpoint
        # offers every UDP datagram this worker owns to ``relay`` before parsing it.
        self.fast_acks = FastAcks(self.core, self.forwarder, endpoint.limits.max_message_size)
        endpoint.shortcut = self

    # -- what the role, the tests and the status page read ------------------------------------
    @property
    def settings(self) -> EngineSettings:
        return self.core.settings

    @settings.setter
    def settings(self, settings: EngineSettings) -> None:
        self.core.settings = settings

    @property
    def stats(self) -> EngineStats:
        return self.core.stats

    @property
    def accounting(self) -> CallAccounting | None:
        return self._accounting

    @accounting.setter
    def accounting(self, accounting: CallAccounting | None) -> None:
        """Where call records go (None: nowhere, and the core makes none)."""
        self._accounting = accounting
        self.core.records_calls = accounting is not None

    @property
    def overload(self) -> OverloadMonitor:
        return self.core.overload

    @property
    def dialog_tokens(self) -> DialogTokens:
        return self.core.dialog_tokens

    def adopt_siblings(self, uris: list[str]) -> None:
        """The proxy pool changed: take its members' Record-Routes as our own."""
        self._siblings = tuple(uris)
        if self.core.listening is None:
            self._listening()  # once the endpoint listens; else at the first message
        else:
            self.core.adopt_siblings(uris)

    def counters(self) -> dict[str, int]:
        return {
            **asdict(self.stats),
            "transactions": len(self.core.layer),
            "calls_active": self.core.active,
            "routing": self.core.waiting,
            "overload_episodes": self.overload.episodes,
            **(self.media.counters() if self.media is not None else {}),
            **(self.accounting.counters() if self.accounting is not None else {}),
        }

    # -- the endpoint's handler ---------------------------------------------------------------
    def on_request(self, request: Request, peer: Peer) -> None:
        if self.core.listening is None:
            self._listening()
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                watch(self.overload.observe, self._backlog)
            )
        # ParseError: the endpoint answers it (an ACK: dropped)
        self.execute(self.core.request(request, peer))

    def relay(self, data: bytes, peer: Peer) -> bool:
        """The endpoint's shortcut: a 2xx ACK that ``FastAcks`` takes is sent and counted
        as ``on_request`` and ``_forward_ack`` would (the endpoint's request count, the
        forwarder's, ``acks_forwarded``); False: declined, nothing done. Not before the
        first message has set up what ``on_request`` sets up."""
        if self._watcher is None or self.core.listening is None:
            return False
        taken = self.fast_acks.take(data, peer)
        if taken is None:
            return False
        forwarded, destination = taken
        count_request(self.endpoint, "ACK")
        stats = self.forwarder.stats
        try:
            self.endpoint.send_bytes(forwarded, destination)
        except TransportError as failed:
            stats.send_errors += 1
            if isinstance(failed, MessageTooLarge):
                stats.too_large += 1  # answer_too_large: an ACK is not answered
            log.debug("ACK to %s failed: %s", destination, failed)
            return True
        stats.requests_forwarded += 1
        self.stats.acks_forwarded += 1
        return True

    def on_response(self, response: Response, peer: Peer) -> None:
        if self.core.listening is None:
            self._listening()
        self.execute(self.core.response(response, peer))  # ParseError: the endpoint drops it

    def destination_failed(self, destination: Destination, error: Exception) -> None:
        """The endpoint could not deliver to ``destination`` after all (a TCP connect)."""
        self.execute(self.core.destination_failed(destination))

    def _listening(self) -> None:
        addresses = tuple((a.transport, a.host, a.port) for a in self.endpoint.addresses)
        if addresses:
            self.core.listen(Listening(addresses, self._siblings))

    # -- the core's actions -------------------------------------------------------------------
    def execute(self, actions: list[ProxyAction]) -> None:
        for action in actions:
            # The transaction layer's three by their exact type first: most actions are
            # these, and isinstance on their (interpreted) classes is a generic call in the
            # compiled build. Subclasses of them, if any, reach the isinstance tests at the
            # end (no class is both one of these and one of the core's).
            if type(action) is _START_TIMER:
                self._arm(action.transaction, action.timer, action.delay)
            elif type(action) is _SEND:
                self._send(action.transaction, action.message)
            elif type(action) is _CANCEL_TIMER:
                self._disarm(action.transaction, action.timer)
            elif isinstance(action, AskPolicy):
                if action.context.arrived is None:
                    action.context.arrived = time.time()  # when the call began, for its record
                self._spawn(self._route(action))
            elif isinstance(action, ForwardAck):
                if action.relay is not None and self.media is not None:
                    self._spawn(self._relay_ack(action, action.relay))
                else:
                    self._forward_ack(action)
            elif isinstance(action, RelayMedia):
                self._spawn(self._relay_media(action))
            elif isinstance(action, EndMedia):
                if self.media is not None:
                    self._spawn(self.media.end(action.relay, action.call_id))
            elif isinstance(action, Answered):
                self._answered(action)
            elif isinstance(action, CallResult):
                if self.accounting is not None:
                    self.accounting.result(action)
            elif isinstance(action, ForwardResponse):
                self.forwarder.forward_response(action.response, action.peer)
            elif isinstance(action, Resolve):
                self._spawn(self._resolve(action))
            elif isinstance(action, TrunkOutcome):
                self._trunk_ended(action)
            elif isinstance(action, DestinationDown):
                self.resolver.down(action.destination)
            elif isinstance(action, Transmit):
                self._transmit(action.message, action.destination)
            elif isinstance(action, Unmatched):
                if not self.prober.answered(action.response):
                    self.stats.stray_responses += 1
            elif isinstance(action, _SEND):
                self._send(action.transaction, action.message)
            elif isinstance(action, _START_TIMER):
                self._arm(action.transaction, action.timer, action.delay)
            elif isinstance(action, _CANCEL_TIMER):
                self._disarm(action.transaction, action.timer)

    def _answered(self, answered: Answered) -> None:
        """How long the request took, arrival to final answer, by method (a metric)."""
        arrived = answered.context.arrived
        if arrived is None:  # answered before it was routed: a check refused it at once
            return
        method = answered.method if answered.method in COUNTED_METHODS else "other"
        self.durations.observe(method, time.time() - arrived)

    def _forward_ack(self, action: ForwardAck) -> None:
        if self.forwarder.forward_request(action.ack, action.peer, action.destination):
            self.stats.acks_forwarded += 1

    # -- the media relay and the call records --------------------------------------------------
    async def _relay_media(self, step: RelayMedia) -> None:
        assert self.media is not None
        sdp = await self.media.answer(step)
        self.execute(self.core.media_rewritten(step.call, step.response, sdp))

    async def _relay_ack(self, action: ForwardAck, relay: str) -> None:
        assert self.media is not None
        await self.media.ack(action.ack, relay)
        self._forward_ack(action)

    async def _before_forwarding(self, ask: AskPolicy, outcome: Outcome) -> None:
        """The call's media offer (a new call that wants a relay, or a relayed dialog's
        re-offer), and a BYE's end of the call record."""
        if not isinstance(outcome, ForkPlan):
            return
        context = ask.context
        if self.media is not None:
            await self.media.prepare(context, outcome)
        if context.request.method != "BYE" or not context.routed_to_us:
            return
        if self.media is not None and context.media_relay is not None:
            self._spawn(self.media.end(context.media_relay, context.request.call_id))
        ours = context.our_route
        if self.accounting is None or ours is None:
            return
        caller_tag = self.dialog_tokens.caller_tag(ours, context.request)
        if caller_tag is not None:
            self.accounting.bye(context, caller_tag)

    def _send(self, transaction: Transaction, message: Message) -> None:
        try:
            self.endpoint.send_bytes(message.serialize(), transaction.peer)
        except TransportError as exc:
            log.debug("%r: send to %s failed: %s", transaction, transaction.peer, exc)
            # too large for a datagram once forwarded: 513 (RFC 3261 §21.5.11), not 503
            status = 513 if isinstance(exc, MessageTooLarge) else 503
            self.execute(self.core.send_failed(transaction, status))

    def _transmit(self, message: Message, destination: Destination) -> None:
        try:
            self.endpoint.send_bytes(message.serialize(), destination)
        except OSError as exc:
            log.debug("%r to %s not sent: %s", message, destination, exc)

    # -- timers: the transactions' and Timer C, one system ----------------------------------------
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The engine's loop, asked for once: on Python 3.11 each
        ``asyncio.get_running_loop()`` is a ``getpid`` system call (its fork check), and
        the engine wants the loop for every timer and task (2 % of the proxy's samples at
        1,200 calls/s). An engine lives in one process and one loop."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _arm(self, transaction: Transaction, timer: Timer, delay: float) -> None:
        loop = self._running_loop()
        key = (transaction, timer)
        timers = self._timers
        armed = timers.get(key)
        # re-armed (Timer C restarts with every provisional response); a coarse slot (an
        # int, tested natively, unlike asyncio.TimerHandle) is skipped when it comes
        if armed is not None and not isinstance(armed, int):
            armed.cancel()
        if delay < COARSE_FROM_S:
            timers[key] = loop.call_later(delay, self._fire, key)
            return
        # Long timers (B, C, F, H, J, L, M, D, K: seconds) share one loop timer per slot:
        # a call arms several and most are cancelled or end a finished transaction.
        slot = math.ceil((loop.time() + delay) / COARSE_RESOLUTION_S)
        keys = self._slots.get(slot)
        if keys is None:
            keys = self._slots[slot] = []
            loop.call_at(slot * COARSE_RESOLUTION_S, self._fire_slot, slot)
        keys.append(key)
        timers[key] = slot

    def _fire_slot(self, slot: int) -> None:
        for key in self._slots.pop(slot, ()):
            if self._timers.get(key) == slot:  # still armed, and armed for this slot
                self._fire(key)

    def _fire(self, key: TimerKey) -> None:
        self._timers.pop(key, None)
        transaction, timer = key
        try:
            self.execute(self.core.timer_fired(transaction, timer))
        except Exception:
            log.exception("timer %s of %r failed", timer, transaction)

    def _disarm(self, transaction: Transaction, timer: Timer) -> None:
        armed = self._timers.pop((transaction, timer), None)
        # an int is a coarse slot: skipped when the slot comes
        if armed is not None and not isinstance(armed, int):
            armed.cancel()

    @property
    def armed(self) -> int:
        return len(self._timers)

    # -- tasks: the policy, the database, the resolver ------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task (kept here so it is not collected while it waits).

        Not started eagerly by hand: code below the policy may need a current task
        (``asyncio.timeout`` in the database drivers does)."""
        task = self._running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _route(self, ask: AskPolicy) -> None:
        outcome: Outcome
        try:
            if ask.failed is None:
                decision = await self.policy.route(ask.context)
            else:
                found = await self.policy.on_failure(ask.context, ask.failed)
                if found is None:
                    self.execute(self.core.routed(ask.call, None))
                    return
                decision = found
            outcome = await self.planner.plan(decision, ask.context)
            if ask.failed is None:
                await self._before_forwarding(ask, outcome)
        except Exception as exc:
            outcome = self._failed_routing(ask, exc)
        self._unless_cancelled_meanwhile(ask)
        self.execute(self.core.routed(ask.call, outcome))

    def _unless_cancelled_meanwhile(self, ask: AskPolicy) -> None:
        """A new call cancelled while the relay made its offer is over (its 487 went before
        the relay was known): the relay lets go of it now. A cancelled re-INVITE is not."""
        relay = ask.context.media_relay
        if self.media is None or relay is None or ask.context.in_dialog:
            return
        call = self.core.calls.get(ask.call)
        if call is None or call.cancelled:
            self._spawn(self.media.end(relay, ask.context.request.call_id))

    def _failed_routing(self, ask: AskPolicy, exc: Exception) -> Reply | None:
        if ask.failed is not None:
            log.warning("failure hook of %r: %r", ask.context.request, exc)
            return None
        if isinstance(exc, StorageUnavailable):
            self._database_trouble(exc)
            retry = (("Retry-After", str(self.settings.calls.retry_after)),)
            reason = "Overloaded" if isinstance(exc, StorageOverloaded) else "Service Unavailable"
            return Reply(503, reason, retry)
        if isinstance(exc, ParseError):
            return Reply(exc.status, exc.reason)
        log.error("routing %r failed", ask.context.request, exc_info=exc)
        return Reply(500, "Server Internal Error")

    def _database_trouble(self, exc: StorageUnavailable) -> None:
        """One warning per interval, however many requests it costs: an outage must
        not turn into a log flood."""
        self._db_errors += 1
        now = time.monotonic()
        if now - self._db_warned_at >= DB_WARNING_INTERVAL_S:
            log.warning("database: %s (%d requests answered 503)", exc, self._db_errors)
            self._db_warned_at = now
            self._db_errors = 0

    async def _resolve(self, resolve: Resolve) -> None:
        result: list[Destination] | ResolveError
        try:
            result = await self.resolver.resolve(resolve.uri)
        except ResolveError as exc:
            result = exc
        self.execute(self.core.resolved(resolve.ref, result))

    def _trunk_ended(self, outcome: TrunkOutcome) -> None:
        """Tell the off-net router how the attempt on a gateway ended (its health)."""
        router = self.planner.off_net
        if router is None:
            return
        try:
            router.trunk_ended(outcome.gateway, outcome.status, outcome.progressed)
        except Exception:
            log.exception("off-net router: trunk_ended(%r) failed", outcome.gateway)

    async def close(self) -> None:
        """Stop timers and tasks (the endpoint is closed by its owner)."""
        for armed in self._timers.values():
            if not isinstance(armed, int):
                armed.cancel()
        self._timers.clear()
        self._slots.clear()
        tasks = [*self.tasks, *self.prober.tasks]
        if self._watcher is not None:
            tasks.append(self._watcher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
