"""The stateful proxy engine (RFC 3261 §16): the endpoint's handler.

Requests: validated (§16.3), matched to transactions (retransmissions are absorbed),
CANCEL answered and applied (§16.10), an ACK for our own non-2xx absorbed, a 2xx ACK
forwarded statelessly by its Route; anything new gets a server transaction (100 Trying
at once for INVITE), its own Route removed (§16.4) and is handed to the policy through
``CallRunner``. Responses go to their client transaction; a 2xx whose transaction is
gone is forwarded statelessly (§16.7).

Overload: while datagrams pile up unread or the loop lags (``overload.py``) new
requests (no To tag) get a
stateless 503 with Retry-After and calls under way go on; requests without a final
answer yet are capped (``sip.max_transactions``), as are those waiting for the policy
or database (``proxy.max_routing``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sipfleet.config import Config
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.overload import OverloadMonitor, no_backlog, watch
from sipfleet.core.proxy.addresses import SIP_PORT, OwnAddresses
from sipfleet.core.proxy.branch import loop_hash
from sipfleet.core.proxy.calls import DEFAULT_CALL_SETTINGS, Call, CallRunner, CallSettings
from sipfleet.core.proxy.checks import check_request
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.plans import Planner
from sipfleet.core.proxy.probes import OptionsProber
from sipfleet.core.proxy.resolve import ResolveError, literal_destination
from sipfleet.core.proxy.routes import route_toward_next_hop, take_our_route
from sipfleet.core.proxy.services import ProxyServices
from sipfleet.core.proxy.shell import TransactionShell
from sipfleet.core.stateless import StatelessForwarder
from sipfleet.routing.api import CallContext, RoutingPolicy
from sipfleet.sip import ParseError, Request, Response, SipUri, validate_request
from sipfleet.sip.builders import make_response, new_tag
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.sip.message import Message
from sipfleet.sip.transaction import (
    DEFAULT_TIMERS,
    ClientTransaction,
    ServerTransaction,
    Timer,
    Timers,
    Transaction,
    TransactionLayer,
)
from sipfleet.sip.uri import Uri
from sipfleet.transport.base import Destination, Peer
from sipfleet.transport.sockets import normalise_host

log = logging.getLogger(__name__)
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    timers: Timers = DEFAULT_TIMERS
    calls: CallSettings = DEFAULT_CALL_SETTINGS
    max_calls: int = 20_000  # requests without a final answer yet
    max_routing: int = 2_000  # requests waiting for the policy / database
    trusted_lbs: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> EngineSettings:
        sip, proxy = config.sip, config.proxy
        timers = Timers(t1=sip.t1_ms / 1000, t2=sip.t2_ms / 1000, t4=sip.t4_ms / 1000)
        calls = CallSettings(
            timer_c=float(sip.timer_c_s),
            cancel_wait=timers.timeout,
            record_route=proxy.record_route,
            retry_after=proxy.retry_after_s,
        )
        return cls(
            timers=timers,
            calls=calls,
            max_calls=sip.max_transactions,
            max_routing=proxy.max_routing,
            trusted_lbs=frozenset(normalise_host(host) for host in proxy.trusted_lbs),
            aliases=tuple(proxy.aliases),
        )


@dataclass(slots=True)
class EngineStats:
    calls: int = 0  # new requests handled statefully
    shed: int = 0  # 503 for overload
    rejected: int = 0  # 482 / 483 / 420
    acks_forwarded: int = 0
    acks_dropped: int = 0  # a 2xx ACK that is not for a dialog of ours
    foreign_routes: int = 0  # a Route naming us without its dialog's token
    stray_responses: int = 0


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
    ) -> None:
        """``backlog``: bytes waiting in the listening sockets (``overload.receive_backlog``);
        ``dialog_tokens``: from the cluster secret (None: a secret of this process alone)."""
        self.endpoint = endpoint
        self.dialog_tokens = dialog_tokens or DialogTokens(secrets.token_bytes(32))
        self.services = services
        self.settings = settings or EngineSettings()
        self.layer = TransactionLayer(self.settings.timers)
        self.shell = TransactionShell(endpoint, self)
        self.calls = CallRunner(
            endpoint=endpoint,
            layer=self.layer,
            shell=self.shell,
            policy=policy,
            planner=planner,
            settings=self.settings.calls,
            hooks=hooks,
            dialog_tokens=self.dialog_tokens,
        )
        self.hooks = hooks
        self.forwarder = StatelessForwarder(endpoint)
        # OPTIONS to gateways for the off-net router's health checks
        self.prober = OptionsProber(endpoint, self.calls.sender.resolver, self.calls.spawn)
        self.stats = EngineStats()
        self._own: OwnAddresses | None = None
        self.overload = OverloadMonitor()
        self._backlog = backlog
        self._watcher: asyncio.Task[None] | None = None

    @property
    def own(self) -> OwnAddresses:
        """Our addresses, known once the endpoint listens."""
        if self._own is None:
            listen = [(a.host, a.port) for a in self.endpoint.addresses]
            self._own = OwnAddresses.build(listen, self.settings.aliases)
        return self._own

    def adopt_siblings(self, uris: list[str]) -> None:
        """The proxy pool changed: take its members' Record-Routes as our own."""
        self._own = self.own.with_siblings(uris)

    def counters(self) -> dict[str, int]:
        return {
            **asdict(self.stats),
            "transactions": len(self.layer),
            "calls_active": self.calls.active,
            "routing": len(self.calls.tasks),
            "overload_episodes": self.overload.episodes,
        }

    # -- requests ---------------------------------------------------------------------------
    def on_request(self, request: Request, peer: Peer) -> None:
        validate_request(request)  # ParseError: the endpoint answers it (an ACK: dropped)
        actions = self.layer.receive(request)
        if actions is not None:
            self.shell.execute(actions)  # a retransmission, or the ACK of our non-2xx
        elif request.method == "ACK":
            self._forward_ack(request, peer)
        elif request.method == "CANCEL":
            self._on_cancel(request, peer)
        else:
            self._on_new(request, peer)

    def _on_new(self, request: Request, peer: Peer) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                watch(self.overload, self._backlog)
            )
        if (
            (self.overload.overloaded and request.to.tag is None)  # finish calls, start none
            or self.calls.active >= self.settings.max_calls
            or len(self.calls.tasks) >= self.settings.max_routing
        ):
            self._shed(request, peer)
            return
        loop = loop_hash(request)
        rejection = check_request(request, self.own, loop)
        ours = self._our_verified_route(request) if rejection is None else None
        server = self.layer.create_server(request, peer=response_destination(request, peer))
        call = Call(server, CallContext(request, peer, self.services), loop)
        server.context = call
        self.stats.calls += 1
        self.calls.active += 1
        if rejection is not None:
            self.stats.rejected += 1
            self.calls.reply(call, rejection.status, rejection.reason, rejection.headers)
            return
        if request.method == "INVITE":  # §16.2: at once, before any lookup
            self.shell.execute(server.respond(make_response(request, 100)))
        if request.method == "OPTIONS" and self._addressed_to_us(request):
            self.calls.reply(call, 200, "OK", [("Allow", ALLOW), ("Accept", "application/sdp")])
            return
        call.ctx.routed_to_us = ours is not None
        call.ctx.our_route = ours
        call.ctx.origin = self._origin(request, peer)
        self.calls.begin(call)

    def _our_verified_route(self, request: Request) -> SipUri | None:
        """§16.4: our Route removed; it counts only when the cluster made it for this
        dialog (``dialog_token``). Else the request is a new one, whatever its To tag:
        the Route set it carries is the sender's, and is not followed."""
        ours = take_our_route(request, self.own)
        if ours is None or self.dialog_tokens.verify(ours, request):
            return ours
        self.stats.foreign_routes += 1
        request.remove_header("route")
        log.info(
            "%s %s from %s: Route names us without this dialog's token; handled as a new request",
            request.method,
            request.call_id,
            request.top_via.host,
        )
        return None

    def _addressed_to_us(self, request: Request) -> bool:
        uri = request.uri
        return (
            isinstance(uri, SipUri)
            and uri.user is None
            and "route" not in request.keys
            and self.own.names(uri)
        )

    def _origin(self, request: Request, peer: Peer) -> str:
        """The caller's address: past one of our LBs, what it stamped in the Via below its
        own (``received``, which it adds whenever the sent-by is not the source)."""
        if peer.host not in self.settings.trusted_lbs:
            return peer.host
        vias = request.vias
        if len(vias) < 2:
            return peer.host
        return normalise_host(vias[1].received or vias[1].host)

    def _shed(self, request: Request, peer: Peer) -> None:
        self.stats.shed += 1
        retry = str(self.settings.calls.retry_after)
        response = make_response(
            request, 503, "Overloaded", to_tag=new_tag(), headers=[("Retry-After", retry)]
        )
        self._send(response, response_destination(request, peer))

    def _on_cancel(self, cancel: Request, peer: Peer) -> None:
        """§16.10: answer the CANCEL, then end the INVITE it names."""
        invite = self.layer.cancel_target(cancel)
        server = self.layer.create_server(cancel, peer=response_destination(cancel, peer))
        call = invite.context if invite is not None else None
        status = 200 if isinstance(call, Call) else 481
        self.shell.execute(server.respond(make_response(cancel, status, to_tag=new_tag())))
        if isinstance(call, Call):
            self.calls.cancel(call)

    def _forward_ack(self, ack: Request, peer: Peer) -> None:
        """An ACK for a 2xx (its own transaction): statelessly, by the Route we are on."""
        try:
            ours = take_our_route(ack, self.own)
            if ours is None or not self.dialog_tokens.verify(ours, ack):
                self.stats.acks_dropped += 1  # not in a dialog we record-routed
                return
            next_hop = route_toward_next_hop(ack)
            destination = literal_destination(next_hop)
        except (ParseError, ResolveError) as exc:
            self.stats.acks_dropped += 1
            log.debug("ACK %s not forwarded: %s", ack.call_id, exc)
            return
        if destination is None:
            self.calls.spawn(self._resolve_ack(ack, peer, next_hop, ours))
        else:
            self._send_ack(ack, peer, destination, ours)

    async def _resolve_ack(self, ack: Request, peer: Peer, next_hop: Uri, ours: SipUri) -> None:
        try:
            destination = await self.calls.sender.resolver.resolve(next_hop)
        except ResolveError as exc:
            self.stats.acks_dropped += 1
            log.debug("ACK %s not forwarded: %s", ack.call_id, exc)
            return
        self._send_ack(ack, peer, destination, ours)

    def _send_ack(self, ack: Request, peer: Peer, destination: Destination, ours: SipUri) -> None:
        self.hooks.forwarding_ack(ack, ours)
        if self.forwarder.forward_request(ack, peer, destination):
            self.stats.acks_forwarded += 1

    # -- responses --------------------------------------------------------------------------
    def on_response(self, response: Response, peer: Peer) -> None:
        actions = self.layer.receive(response)  # ParseError: the endpoint drops it
        if actions is not None:
            self.shell.execute(actions)
        elif response.is_success and response.cseq.method == "INVITE":
            # a 2xx retransmission after our transaction ended still reaches the caller
            self.forwarder.forward_response(response, peer)
        elif not self.prober.answered(response):
            self.stats.stray_responses += 1

    # -- the transactions' events (TransactionUser) -----------------------------------------
    def delivered(self, transaction: Transaction, message: Message) -> None:
        if isinstance(message, Response):
            owner = transaction.context
            if isinstance(transaction, ClientTransaction) and owner is not None:
                call, branch = owner
                self.calls.branch_response(call, branch, message)
        elif isinstance(message, Request) and isinstance(transaction, ServerTransaction):
            source = transaction.peer
            peer = Peer(source.transport, source.host, source.port, "", 0, source.connection_id)
            self._forward_ack(message, peer)  # an ACK the 2xx's transaction matched

    def timed_out(self, transaction: Transaction, timer: Timer) -> None:
        if isinstance(transaction, ClientTransaction) and transaction.context is not None:
            call, branch = transaction.context
            self.calls.branch_failed(call, branch, 408)

    def send_failed(self, transaction: Transaction, status: int = 503) -> None:
        if isinstance(transaction, ClientTransaction) and transaction.context is not None:
            call, branch = transaction.context
            self.calls.branch_failed(call, branch, status)

    def destination_failed(self, destination: Destination, error: Exception) -> None:
        """The endpoint could not deliver to ``destination`` after all (a TCP connect
        failed): every client transaction toward it had a transport error."""
        if destination.transport != "tcp":
            return
        for client in self.calls.sender.failed_toward(destination):
            self.shell.execute(client.transport_failed())

    def terminated(self, transaction: Transaction) -> None:
        # A call and its server transaction point at each other; cut the cycle so the
        # call is freed at once (a collector pass over every live call is costly).
        transaction.context = None

    def _send(self, message: Message, destination: Destination) -> None:
        try:
            self.endpoint.send_bytes(message.serialize(), destination)
        except OSError as exc:
            log.debug("%r to %s not sent: %s", message, destination, exc)

    async def close(self) -> None:
        """Stop timers and routing tasks (the endpoint is closed by its owner)."""
        self.shell.cancel_all()
        tasks = list(self.calls.tasks)
        if self._watcher is not None:
            tasks.append(self._watcher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def response_destination(request: Request, peer: Peer) -> Destination:
    """Where responses to ``request`` go (§18.2.2, RFC 3581): over the connection it came
    on (TCP); for UDP to the source address, and the source port when ``rport`` was
    asked, else the Via's port."""
    if peer.transport == "tcp":
        return peer.reply_to
    via = request.top_via
    port = peer.port if via.has_rport else (via.port or SIP_PORT)
    return Destination("udp", peer.host, port, None, (peer.local_host, peer.local_port))
