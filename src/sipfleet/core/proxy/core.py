"""The stateful proxy of RFC 3261 §16 as one sans-IO object: events in, actions out.

``ProxyCore`` owns the transaction layer and every call. Its methods are the events
(a request or a response received, a timer fired, a send failed, a routing outcome, a
resolved host name) and each returns the actions for the shell (``actions.py``): send,
arm or disarm a timer, ask the policy, resolve a host, forward statelessly, report a
trunk's outcome. No sockets, no clock, no tasks; the asyncio shell is ``engine.py``.

Ownership runs one way, parent to child, so a finished call is freed by reference
counting alone (no cycles for the collector to find):

    ProxyCore ─► TransactionLayer ─► transactions
              ─► calls {server key: Call} ─► server transaction, CallContext,
                                             ResponseContext ─► Branch ─► client transaction
              ─► branch_of {client key: (call key, branch index)}

A transaction never points at its call or branch: a response's transaction is found by
the layer, its branch by the transaction's key in ``branch_of``, its call by key in
``calls``. A call leaves ``calls`` when its server transaction has ended and none of its
branches' client transactions is alive.

Timer C (§16.6 step 11, §16.8) is ``Timer.C`` on a branch's client INVITE transaction,
armed and fired through the same ``StartTimer``/``timer_fired`` as the transaction
timers; the transaction ignores it and the core handles it.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from sipfleet.core.overload import OverloadMonitor
from sipfleet.core.proxy.actions import (
    Answered,
    AskPolicy,
    CallKey,
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
from sipfleet.core.proxy.addresses import SIP_PORT, OwnAddresses
from sipfleet.core.proxy.branch import BranchMaker, loop_hash
from sipfleet.core.proxy.checks import check_request
from sipfleet.core.proxy.context import (
    ArmTimerC,
    Branch,
    BranchState,
    CancelBranch,
    ContextAction,
    DisarmTimerC,
    Exhausted,
    ResponseContext,
    StartBranch,
    ToTag,
    TrunkEnded,
    Upstream,
)
from sipfleet.core.proxy.forward import forward_copy, wants_record_route
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.media import carries_sdp, relay_of, with_relay
from sipfleet.core.proxy.resolve import ResolveError, literal_destination
from sipfleet.core.proxy.routes import route_toward_next_hop, take_our_route
from sipfleet.core.proxy.targets import ForkPlan
from sipfleet.routing.api import CallContext, CallServices, Reply
from sipfleet.sip import ParseError, Request, Response, SipUri, validate_request
from sipfleet.sip.builders import make_cancel, make_response, new_tag
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.sip.transaction import (
    DEFAULT_TIMERS,
    Action,
    CancelTimer,
    ClientInviteTransaction,
    ClientTransaction,
    Deliver,
    Send,
    ServerTransaction,
    StartTimer,
    State,
    Terminated,
    Timeout,
    Timer,
    Timers,
    Transaction,
    TransactionLayer,
    TransportError,
)
from sipfleet.sip.uri import Uri
from sipfleet.sip.via import made_via
from sipfleet.transport.base import Destination, Peer, TransportName
from sipfleet.transport.sockets import family_of, normalise_host

log = logging.getLogger(__name__)
Header = tuple[str, str]
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK"
ACCEPTED: Final = State.ACCEPTED
ANSWERED: Final = (State.ACCEPTED, State.COMPLETED, State.TERMINATED)  # a final response came
_COMPLETED: Final = State.COMPLETED
_TERMINATED_STATE: Final = State.TERMINATED
MAX_REROUTES = 3  # failure-hook rounds per call: a policy cannot keep a call forever
_new_tuple: Final = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path
# The transaction layer's actions are interpreted classes (sip/transaction/actions.py): in
# the compiled build each plain reference to one is a lookup in this module's globals, a
# Final alias a C static. ``_run`` tests every action of every transaction against them.
_START_TIMER: Final = StartTimer
_CANCEL_TIMER: Final = CancelTimer
_DELIVER: Final = Deliver
_TIMEOUT: Final = Timeout
_TRANSPORT_ERROR: Final = TransportError
_TERMINATED: Final = Terminated
_FOR_THE_SHELL: Final = (Send, StartTimer, CancelTimer)  # passed on as they are
_TIMER_C: Final = Timer.C  # an enum member: a lookup and an attribute read, else


@dataclass(frozen=True, slots=True)
class CallSettings:
    timer_c: float = 180.0
    cancel_wait: float = 32.0  # after cancelling a branch on Timer C: 64*T1
    flow_timeout: float = 4.0  # nothing heard over one of a phone's flows: its next flow
    record_route: bool = True  # Record-Route dialog-creating requests
    retry_after: int = 5


DEFAULT_CALL_SETTINGS = CallSettings()


@dataclass(frozen=True, slots=True)
class EngineSettings:
    timers: Timers = DEFAULT_TIMERS
    calls: CallSettings = DEFAULT_CALL_SETTINGS
    # transactions kept, in progress or answered and waiting out Timers J, L, H, M, K:
    # what bounds the proxy's memory, whatever rate anyone sends at
    max_transactions: int = 200_000
    max_routing: int = 2_000  # requests waiting for the policy / database / resolver
    trusted_lbs: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    aliases: tuple[str, ...] = ()


@dataclass(slots=True)
class EngineStats:
    calls: int = 0  # new requests handled statefully
    shed: int = 0  # 503 for overload
    rejected: int = 0  # 482 / 483 / 420
    acks_forwarded: int = 0
    acks_dropped: int = 0  # a 2xx ACK that is not for a dialog of ours
    foreign_routes: int = 0  # a Route naming us without its dialog's token
    stray_responses: int = 0


@dataclass(frozen=True, slots=True)
class Listening:
    """Where the proxy listens (known once the endpoint has bound its sockets)."""

    addresses: tuple[tuple[TransportName, str, int], ...]
    siblings: tuple[str, ...] = field(default=())

    def sent_by(self, transport: TransportName, remote_host: str) -> str | None:
        """Our ``host:port`` for a Via toward ``remote_host``: the first listener of
        that transport and address family (as ``SipEndpoint.local_address``)."""
        family = family_of(remote_host)
        for kind, host, port in self.addresses:
            if kind == transport and family_of(host) == family:
                return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return None

    def record_route(self) -> str:
        """``<sip:host:port;lr>`` of our first listen address (UDP preferred)."""
        transport, host, port = sorted(self.addresses, key=lambda a: a[0] != "udp")[0]
        host = f"[{host}]" if ":" in host else host
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{host}:{port}{suffix};lr>"


_NO_BRANCHES: Final[list[Branch]] = []  # a call not forked yet; never added to


def _answered(state: State) -> bool:
    """``state in ANSWERED`` (a final response came), by identity: a transaction's state
    is always one of the members, and ``in`` on a tuple is a generic call compiled."""
    return state is ACCEPTED or state is _COMPLETED or state is _TERMINATED_STATE


class Call:
    """A request handled statefully, from its server transaction to its final answer.

    ``routing`` is what the policy and the hooks see; ``responses`` the §16.7 response
    context once the call forks."""

    __slots__ = (
        "alternates",
        "cancelled",
        "clients",
        "failed",
        "finished",
        "key",
        "loop_hash",
        "media_queue",
        "relayed_2xx",
        "reroutes",
        "responses",
        "routing",
        "server",
        "server_ended",
        "tag",
    )

    def __init__(self, server: ServerTransaction, routing: CallContext, loop: str) -> None:
        self.key: CallKey = server.key
        self.server = server
        self.routing = routing
        self.loop_hash = loop
        self.responses: ResponseContext | None = None
        self.failed: Response | None = None  # the best response while the failure hook runs
        self.cancelled = False
        self.finished = False  # a final response went upstream
        self.server_ended = False
        self.clients = 0  # live client transactions of its branches
        self.reroutes = 0
        # answers waiting for the media relay, in order; True: this one's SDP goes through it
        self.media_queue: list[tuple[Response, bool]] | None = None
        # a 2xx's To tag and the SDP the relay gave it: its retransmissions get the same
        self.relayed_2xx: tuple[str | None, bytes] | None = None
        # RFC 3263 §4.3: per branch index, the other destinations its host name resolved
        # to, tried in turn when one times out, fails in transport or answers 503
        self.alternates: dict[int, list[Destination]] = {}
        self.tag = ToTag()

    @property
    def to_tag(self) -> str:
        """The To tag of the responses the proxy makes itself for this request."""
        return self.tag.text()


@dataclass(slots=True)
class _BranchRef:
    call: CallKey
    index: int

    def __init__(self, call: CallKey, index: int) -> None:  # compiled: see AskPolicy
        self.call = call
        self.index = index


@dataclass(slots=True)
class _AckRef:
    ack: Request
    peer: Peer
    ours: SipUri


class ProxyCore:
    def __init__(
        self,
        services: CallServices,
        settings: EngineSettings | None = None,
        *,
        hooks: MessageHooks = NO_HOOKS,
        dialog_tokens: DialogTokens | None = None,
        overload: OverloadMonitor | None = None,
        ask_on_failure: bool = False,
    ) -> None:
        """``services``: handed to the policy in each ``CallContext`` (the core never
        calls it); ``ask_on_failure``: the policy has a failure hook."""
        self.services = services
        self.settings = settings or EngineSettings()
        self.hooks = hooks
        self.dialog_tokens = dialog_tokens or DialogTokens(secrets.token_bytes(32))
        self.overload = overload or OverloadMonitor()
        self.ask_on_failure = ask_on_failure
        self.layer = TransactionLayer(self.settings.timers)
        self.stats = EngineStats()
        self.calls: dict[CallKey, Call] = {}
        self.branch_of: dict[CallKey, _BranchRef] = {}  # client transaction key -> branch
        self.active = 0  # calls without a final response yet
        self.routing = 0  # calls waiting for the policy
        self.resolving: dict[int, _BranchRef | _AckRef] = {}
        self.own = OwnAddresses.build([], self.settings.aliases)
        self.listening: Listening | None = None
        self._record_route = ""
        self._refs = itertools.count(1)
        self._branches = BranchMaker()
        # The text before our Via's parameters, by (transport, IPv6 destination), for the
        # Listening it was made from (see _our_via)
        self._vias_for: Listening | None = None
        self._vias: dict[tuple[str, bool], str | None] = {}
        # client transactions per TCP destination: a connect that fails later (reported
        # by destination) fails them all as transport errors
        self.tcp_clients: dict[tuple[str, int], list[ClientTransaction]] = {}
        # CallResult for each call's final answer; the shell turns it off when it keeps
        # no call records (the record costs a call more than the rest of its 200's relay)
        self.records_calls = True

    # -- configuration events ---------------------------------------------------------------
    def listen(self, listening: Listening) -> None:
        """The endpoint listens on ``listening.addresses`` (and the pool has siblings)."""
        self.listening = listening
        own = OwnAddresses.build([(h, p) for _, h, p in listening.addresses], self.settings.aliases)
        self.own = own.with_siblings(listening.siblings) if listening.siblings else own
        self._record_route = listening.record_route()

    def adopt_siblings(self, uris: Sequence[str]) -> None:
        """The proxy pool changed: take its members' Record-Routes as our own."""
        if self.listening is not None:
            self.listen(Listening(self.listening.addresses, tuple(uris)))

    @property
    def waiting(self) -> int:
        """Requests waiting for the policy, the database or the resolver."""
        return self.routing + len(self.resolving)

    # -- requests ---------------------------------------------------------------------------
    def request(self, request: Request, peer: Peer) -> list[ProxyAction]:
        """A request came. Raises ParseError for one the endpoint must answer (or drop)."""
        validate_request(request)
        actions = self.layer.receive(request)
        if actions is not None:
            return self._run(actions)  # a retransmission, or the ACK of our non-2xx
        if request.method == "ACK":
            return self._forward_ack(request, peer)
        if request.method == "CANCEL":
            return self._cancel(request, peer)
        return self._new(request, peer)

    def _new(self, request: Request, peer: Peer) -> list[ProxyAction]:
        settings = self.settings
        if (
            (self.overload.overloaded and request.to.tag is None)  # finish calls, start none
            or len(self.layer) >= settings.max_transactions
            or self.waiting >= settings.max_routing
        ):
            return self._shed(request, peer)
        loop = loop_hash(request)
        rejection = check_request(request, self.own, loop)
        ours = self._our_verified_route(request) if rejection is None else None
        server = self.layer.create_server(request, peer=response_destination(request, peer))
        call = Call(server, CallContext(request, peer, self.services), loop)
        self.calls[call.key] = call
        self.stats.calls += 1
        self.active += 1
        if rejection is not None:
            self.stats.rejected += 1
            return self._reply(call, rejection.status, rejection.reason, rejection.headers)
        actions: list[ProxyAction] = []
        if request.method == "INVITE":  # §16.2: at once, before any lookup
            actions = self._run(server.respond(make_response(request, 100)))
        if request.method == "OPTIONS" and self._addressed_to_us(request):
            headers = [("Allow", ALLOW), ("Accept", "application/sdp")]
            return self._reply(call, 200, "OK", headers)
        routing = call.routing
        routing.routed_to_us = ours is not None
        routing.our_route = ours
        routing.origin = self._origin(request, peer)
        self.routing += 1
        actions.append(AskPolicy(call.key, routing))
        return actions

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

    def _shed(self, request: Request, peer: Peer) -> list[ProxyAction]:
        self.stats.shed += 1
        retry = str(self.settings.calls.retry_after)
        response = make_response(
            request, 503, "Overloaded", to_tag=new_tag(), headers=[("Retry-After", retry)]
        )
        return [Transmit(response, response_destination(request, peer))]

    def _cancel(self, cancel: Request, peer: Peer) -> list[ProxyAction]:
        """§16.10: answer the CANCEL, then end the INVITE it names."""
        invite = self.layer.cancel_target(cancel)
        call = self.calls.get(invite.key) if invite is not None else None
        server = self.layer.create_server(cancel, peer=response_destination(cancel, peer))
        status = 200 if invite is not None else 481  # answered already: 200, no effect
        actions = self._run(server.respond(make_response(cancel, status, to_tag=new_tag())))
        if call is None:
            return actions
        if call.responses is not None:
            actions.extend(self._apply(call, call.responses.cancel()))
        elif not call.finished:
            call.cancelled = True
            actions.extend(self._reply(call, 487, "Request Terminated"))
        return actions

    def _forward_ack(self, ack: Request, peer: Peer) -> list[ProxyAction]:
        """An ACK for a 2xx (its own transaction): statelessly, by the Route we are on."""
        try:
            ours = take_our_route(ack, self.own)
            if ours is None or not self.dialog_tokens.verify(ours, ack):
                self.stats.acks_dropped += 1  # not in a dialog we record-routed
                return []
            next_hop = route_toward_next_hop(ack)
            destination = literal_destination(next_hop)
        except (ParseError, ResolveError) as exc:
            self.stats.acks_dropped += 1
            log.debug("ACK %s not forwarded: %s", ack.call_id, exc)
            return []
        if destination is None:
            return [self._resolve(_AckRef(ack, peer, ours), next_hop)]
        self.hooks.forwarding_ack(ack, ours)
        return [ForwardAck(ack, peer, destination, relay_of(ours))]

    # -- responses --------------------------------------------------------------------------
    def response(self, response: Response, peer: Peer) -> list[ProxyAction]:
        """A response came. Raises ParseError for one to drop."""
        actions = self.layer.receive(response)
        if actions is not None:
            return self._run(actions)
        if response.is_success and response.cseq.method == "INVITE":
            # a 2xx retransmission after our transaction ended still reaches the caller
            return [ForwardResponse(response, peer)]
        return [Unmatched(response)]

    # -- the shell's events -----------------------------------------------------------------
    def timer_fired(self, transaction: Transaction, timer: Timer) -> list[ProxyAction]:
        if timer is not _TIMER_C:
            return self._run(transaction.timer_fired(timer))
        found = self._branch(transaction)
        if found is None:
            return []
        call, branch = found
        assert call.responses is not None
        waited = branch.expired  # cancelled on Timer C, then 64*T1 without an answer
        actions = self._apply(call, call.responses.on_timer_c(branch))
        if waited and isinstance(transaction, ClientInviteTransaction):
            actions.extend(self._run(transaction.abandon()))  # §9.1
        return actions

    def send_failed(self, transaction: Transaction, status: int = 503) -> list[ProxyAction]:
        """A message of ``transaction`` could not be sent: 503, or 513 when too large."""
        return self._run(transaction.transport_failed(), status)

    def destination_failed(self, destination: Destination) -> list[ProxyAction]:
        """The endpoint could not deliver to a TCP ``destination`` after all (a connect
        failed): every client transaction toward it had a transport error."""
        if destination.transport != "tcp":
            return []
        key = (normalise_host(destination.host), destination.port)
        actions: list[ProxyAction] = []
        for client in self.tcp_clients.pop(key, []):
            actions.extend(self._run(client.transport_failed()))
        return actions

    def routed(self, key: CallKey, outcome: Outcome) -> list[ProxyAction]:
        """The answer to ``AskPolicy``: a plan, a reply, or (failure hook) nothing."""
        self.routing -= 1
        call = self.calls.get(key)
        if call is None or call.cancelled:
            return []
        context = call.responses
        if context is None:  # the first routing
            if isinstance(outcome, ForkPlan):
                return self._fork(call, outcome)
            reply = outcome or Reply(500, "Server Internal Error")
            return self._reply(call, reply.status, reply.reason, reply.headers)
        best, call.failed = call.failed, None
        assert best is not None
        if outcome is None:
            return self._apply(call, context.give_up(best))
        if isinstance(outcome, Reply):
            answer = self._response(call, outcome.status, outcome.reason, outcome.headers)
            return self._apply(call, context.give_up(answer))
        call.routing.extra_headers = list(outcome.headers)
        return self._apply(call, context.reroute(outcome))

    def resolved(
        self, ref: int, result: Sequence[Destination] | Destination | ResolveError
    ) -> list[ProxyAction]:
        """The answer to ``Resolve``: the destinations in the order to try them."""
        if isinstance(result, Destination):
            result = [result]
        elif not isinstance(result, ResolveError) and not result:
            result = ResolveError("no address found")
        pending = self.resolving.pop(ref, None)
        if isinstance(pending, _AckRef):
            if isinstance(result, ResolveError):
                self.stats.acks_dropped += 1
                log.debug("ACK %s not forwarded: %s", pending.ack.call_id, result)
                return []
            self.hooks.forwarding_ack(pending.ack, pending.ours)
            return [ForwardAck(pending.ack, pending.peer, result[0], relay_of(pending.ours))]
        call = self.calls.get(pending.call) if pending is not None else None
        if pending is None or call is None or call.responses is None:
            return []
        branch = call.responses.branches[pending.index]
        if isinstance(result, ResolveError):
            return self._unreachable(call, branch, result)
        first, *others = result
        call.alternates[branch.index] = others
        return self._send_branch(call, branch, first)

    # -- the transactions' actions ------------------------------------------------------------
    def _run(self, actions: list[Action], failed_status: int = 503) -> list[ProxyAction]:
        """Pass on what is for the shell; handle what is for the TU (us)."""
        out: list[ProxyAction] = []
        for action in actions:
            if isinstance(action, _FOR_THE_SHELL):
                out.append(action)
            elif isinstance(action, _DELIVER):
                out.extend(self._delivered(action.transaction, action.message))
            elif isinstance(action, _TIMEOUT):
                out.extend(self._branch_failed(action.transaction, 408))
            elif isinstance(action, _TRANSPORT_ERROR):
                out.extend(self._branch_failed(action.transaction, failed_status))
            elif isinstance(action, _TERMINATED):
                out.extend(self._terminated(action.transaction))
        return out

    def _delivered(self, transaction: Transaction, message: object) -> list[ProxyAction]:
        if isinstance(message, Response):
            found = self._branch(transaction)
            if found is None:
                return []  # the answer to a CANCEL of ours, or a call already over
            call, branch = found
            message.pop_first_value("via")  # ours; what is left is the caller's
            assert call.responses is not None
            if message.status == 503:
                retried = self._next_destination(call, branch, "503")
                if retried is not None:
                    return retried
            return self._apply(call, call.responses.on_response(branch, message))
        if isinstance(message, Request) and isinstance(transaction, ServerTransaction):
            source = transaction.peer
            assert isinstance(source, Destination)
            peer = Peer(source.transport, source.host, source.port, "", 0, source.connection_id)
            return self._forward_ack(message, peer)  # an ACK the 2xx's transaction matched
        return []

    def _branch_failed(self, transaction: Transaction, status: int) -> list[ProxyAction]:
        found = self._branch(transaction)
        if found is None:
            return []
        call, branch = found
        assert call.responses is not None
        if status not in (408, 503) or branch.destination is None:
            return self._apply(call, call.responses.on_failure(branch, status))
        down: list[ProxyAction] = [DestinationDown(branch.destination)]
        why = "a timeout" if status == 408 else "a transport error"
        retried = self._next_destination(call, branch, why)
        if retried is not None:
            return down + retried
        return down + self._apply(call, call.responses.on_failure(branch, status))

    def _next_destination(self, call: Call, branch: Branch, why: str) -> list[ProxyAction] | None:
        """RFC 3263 §4.3: the branch's request, in a new client transaction, to the next
        destination its host resolved to; None when there is none left (or the call is
        over, or the branch being cancelled): the failure then counts."""
        others = call.alternates.get(branch.index)
        responses = call.responses
        if not others or responses is None or responses.final_sent:
            return None
        if branch.cancel_wanted or branch.expired:
            return None
        failed, destination = branch.destination, others.pop(0)
        log.info("%r: %s from %s: trying %s", call.server.request, why, failed, destination)
        actions: list[ProxyAction] = []
        if branch.client is not None and branch.client.method == "INVITE":
            actions.append(_CANCEL_TIMER(branch.client, _TIMER_C))
            branch.timer_c_delay = responses.timer_c_for(branch.target)  # a new server's
        branch.client = None
        branch.state = BranchState.CALLING
        branch.progressed = False  # what the trunk's health hears is of the last server
        actions.extend(self._start_branch(call, branch, destination))
        return actions

    def _branch(self, transaction: Transaction) -> tuple[Call, Branch] | None:
        ref = self.branch_of.get(transaction.key)
        call = self.calls.get(ref.call) if ref is not None else None
        if ref is None or call is None or call.responses is None:
            return None
        branch = call.responses.branches[ref.index]
        return (call, branch) if branch.client is transaction else None

    def _terminated(self, transaction: Transaction) -> list[ProxyAction]:
        if isinstance(transaction, ServerTransaction):
            call = self.calls.get(transaction.key)
            if call is not None and call.server is transaction:
                call.server_ended = True
                self._forget_if_over(call)
            return []
        ref = self.branch_of.pop(transaction.key, None)
        if ref is None:
            return []
        call = self.calls.get(ref.call)
        if call is not None:
            call.clients -= 1
            self._forget_if_over(call)
        if transaction.method == "INVITE":
            return [_CANCEL_TIMER(transaction, _TIMER_C)]  # its Timer C holds it: let go
        return []

    def _our_via(self, transport: TransportName, host: str) -> str | None:
        """``SIP/2.0/<TRANSPORT> <sent-by>`` for our Via toward ``host``; None when we do
        not listen on that transport and address family. Memoised: ``Listening.sent_by``
        reads only the transport and the family (``family_of``: a ':' in the host)."""
        listening = self.listening
        if listening is None:
            return None
        if listening is not self._vias_for:
            self._vias_for = listening
            self._vias = {}
        key = (transport, ":" in host)
        if key in self._vias:
            return self._vias[key]
        sent_by = listening.sent_by(transport, host)
        ours = None if sent_by is None else f"SIP/2.0/{transport.upper()} {sent_by}"
        self._vias[key] = ours
        return ours

    def _forget_if_over(self, call: Call) -> None:
        """Let go of what a call no longer needs; every kept transaction counts against
        the cap, so a finished call should cost little while its transactions wait out
        their timers (J, L, H, M, K: up to 32 s over UDP).

        The call itself goes once it has its final answer (or its server transaction
        ended) and no branch waits for an answer or may still pass a 2xx retransmission
        up (a client INVITE in Accepted: that 2xx goes through the hooks, which need the
        call), nor has a client to cancel when it rings (§9.1). Its transactions stay and
        answer retransmissions on their own, from what they sent; they let go of the
        requests. While a 2xx may still come, the call stays but lets go of the
        forwarded copies and the final responses it kept."""
        branches = _NO_BRANCHES if call.responses is None else call.responses.branches
        if not (call.server_ended and call.clients == 0):
            if not call.finished or any(
                b.pending or (b.client is not None and not _answered(b.client.state))
                for b in branches
            ):
                return  # an answer to wait for, or a CANCEL to send when one comes (§9.1)
            if any(b.client is not None and b.client.state is ACCEPTED for b in branches):
                self._let_go_of_copies(branches)
                return
        if self.calls.pop(call.key, None) is not call:
            return
        call.server.forget_request()
        for branch in branches:
            client = branch.client
            if client is not None and _answered(client.state):
                client.forget_request()

    @staticmethod
    def _let_go_of_copies(branches: list[Branch]) -> None:
        for branch in branches:
            client = branch.client
            if branch.request is not None and client is not None and _answered(client.state):
                client.forget_request()
                branch.request = branch.response = None

    # -- forking ------------------------------------------------------------------------------
    def _fork(self, call: Call, plan: ForkPlan) -> list[ProxyAction]:
        settings = self.settings.calls
        call.responses = ResponseContext(
            call.routing.request,
            timer_c=settings.timer_c,
            cancel_wait=settings.cancel_wait,
            ask_on_failure=self.ask_on_failure,
            to_tag=call.tag,  # made if the context answers itself
            flow_timeout=settings.flow_timeout,
        )
        call.routing.extra_headers = list(plan.headers)
        return self._apply(call, call.responses.start(plan))

    def _apply(self, call: Call, actions: list[ContextAction]) -> list[ProxyAction]:
        """Carry out what the response context decided."""
        out: list[ProxyAction] = []
        for action in actions:
            if isinstance(action, Upstream):
                out.extend(self._upstream(call, action.response))
            elif isinstance(action, StartBranch):
                out.extend(self._start_branch(call, action.branch))
            elif isinstance(action, ArmTimerC):
                branch = action.branch
                if branch.client is None:
                    branch.timer_c_delay = action.delay  # armed once it is sent
                else:
                    out.append(_START_TIMER(branch.client, _TIMER_C, action.delay))
            elif isinstance(action, DisarmTimerC):
                action.branch.timer_c_delay = None
                if action.branch.client is not None:
                    out.append(_CANCEL_TIMER(action.branch.client, _TIMER_C))
            elif isinstance(action, CancelBranch):
                out.extend(self._cancel_branch(action.branch))
            elif isinstance(action, Exhausted):
                out.extend(self._exhausted(call, action.best))
            elif isinstance(action, TrunkEnded):
                branch = action.branch
                if branch.target.gateway is not None:
                    gateway = branch.target.gateway
                    out.append(TrunkOutcome(gateway, branch.status, branch.progressed))
        self._forget_if_over(call)
        return out

    def _exhausted(self, call: Call, best: Response) -> list[ProxyAction]:
        assert call.responses is not None
        if call.reroutes >= MAX_REROUTES:
            return self._apply(call, call.responses.give_up(best))
        call.reroutes += 1
        call.failed = best
        self.routing += 1
        return [AskPolicy(call.key, call.routing, best)]

    def _start_branch(
        self, call: Call, branch: Branch, destination: Destination | None = None
    ) -> list[ProxyAction]:
        """§16.6 for one target: the copy, then its next hop (or a lookup of it);
        ``destination``: where it goes, already resolved (a failover)."""
        request = call.routing.request
        record_route = None
        if self.settings.calls.record_route and wants_record_route(request):
            ours = self.dialog_tokens.stamp(self._record_route, request)
            if call.routing.media_relay is not None:  # later requests find the relay by it
                ours = with_relay(ours, call.routing.media_relay)
            record_route = self.hooks.record_route(call.routing, ours)
        try:
            headers = call.routing.extra_headers
            copy, next_hop = forward_copy(
                request, branch.target, record_route=record_route, headers=headers
            )
            destination = destination or literal_destination(next_hop)
        except (ParseError, ResolveError) as exc:
            return self._unreachable(call, branch, exc)
        branch.request = copy
        if destination is None:
            return [self._resolve(_BranchRef(call.key, branch.index), next_hop)]
        return self._send_branch(call, branch, destination)

    def _resolve(self, ref: _BranchRef | _AckRef, uri: Uri) -> Resolve:
        number = next(self._refs)
        self.resolving[number] = ref
        return Resolve(number, uri)

    def _send_branch(
        self, call: Call, branch: Branch, destination: Destination
    ) -> list[ProxyAction]:
        copy = branch.request
        assert copy is not None
        ours = self._our_via(destination.transport, destination.host)
        if ours is None:
            retried = self._next_destination(call, branch, "no listener toward it")
            if retried is not None:
                return retried
            missing = ResolveError(f"no {destination.transport} listener for {destination.host}")
            return self._unreachable(call, branch, missing)
        self.hooks.forwarding(copy, call.routing)
        # pushed parsed (made_via): the client transaction reads it at once
        copy.push_via(made_via(ours, self._branches.make(call.loop_hash)))
        branch.destination = destination
        client, started = self.layer.create_client(copy, peer=destination)
        branch.client = client
        self.branch_of[client.key] = _BranchRef(call.key, branch.index)
        call.clients += 1
        self._track(client, destination)
        actions = self._run(started)
        if branch.timer_c_delay is not None and branch.pending:
            actions.append(_START_TIMER(client, _TIMER_C, branch.timer_c_delay))
            branch.timer_c_delay = None
        return actions

    def _cancel_branch(self, branch: Branch) -> list[ProxyAction]:
        """CANCEL for a branch that had a provisional response (§9.1)."""
        if branch.request is None or branch.destination is None:
            return []
        client, actions = self.layer.create_client(
            make_cancel(branch.request), peer=branch.destination
        )
        self._track(client, branch.destination)
        return self._run(actions)

    def _track(self, client: ClientTransaction, destination: Destination) -> None:
        if destination.transport != "tcp":
            return
        key = (normalise_host(destination.host), destination.port)
        clients = self.tcp_clients.setdefault(key, [])
        clients.append(client)
        if len(clients) > 64:  # forget the finished ones now and then
            clients[:] = [each for each in clients if not each.terminated]

    def _unreachable(self, call: Call, branch: Branch, exc: Exception) -> list[ProxyAction]:
        log.info("%r: target %s unreachable: %s", call.server.request, branch.target.uri, exc)
        if branch.state is BranchState.DONE or call.responses is None:
            return []
        status = exc.status if isinstance(exc, (ParseError, ResolveError)) else 503
        if isinstance(exc, ResolveError) and status == 404:
            if branch.target.gateway is not None:
                status = 503  # a trunk that cannot be reached: the next trunk is tried
            else:  # the caller learns why: "404 Not Found (DNS: … does not exist in DNS)"
                branch.response = self._response(call, status, f"Not Found (DNS: {exc})", ())
        return self._apply(call, call.responses.on_failure(branch, status))

    # -- answering ------------------------------------------------------------------------------
    def _reply(
        self, call: Call, status: int, reason: str | None = None, headers: Sequence[Header] = ()
    ) -> list[ProxyAction]:
        return self._upstream(call, self._response(call, status, reason, headers))

    @staticmethod
    def _response(
        call: Call, status: int, reason: str | None, headers: Sequence[Header]
    ) -> Response:
        request = call.server.request
        return make_response(request, status, reason, to_tag=call.to_tag, headers=[*headers])

    def _upstream(self, call: Call, response: Response) -> list[ProxyAction]:
        relay = call.routing.media_relay
        through_relay = relay is not None and response.status > 100 and carries_sdp(response)
        queue = call.media_queue
        if queue is not None:  # behind an answer at the relay: keep the order
            queue.append((response, through_relay))
            return []
        if through_relay and self._relayed_before(call, response):
            return self._answer(call, response)
        if through_relay:
            assert relay is not None
            call.media_queue = [(response, True)]
            return [RelayMedia(call.key, response, call.routing.request, relay)]
        return self._answer(call, response)

    def media_rewritten(
        self, key: CallKey, response: Response, sdp: bytes | None
    ) -> list[ProxyAction]:
        """The answer to ``RelayMedia``: the relay's SDP for ``response`` (None: the relay
        failed; it goes on as it came). The answers queued behind it follow."""
        call = self.calls.get(key)
        queue = call.media_queue if call is not None else None
        if call is None or not queue or queue[0][0] is not response:
            return []
        if sdp is not None:
            response.set_body(sdp)
            if response.is_success:
                call.relayed_2xx = (response.to.tag, sdp)
        queue.pop(0)
        actions = self._answer(call, response)
        while queue:
            waiting, through_relay = queue[0]
            relay = call.routing.media_relay
            if through_relay and relay is not None:
                actions.append(RelayMedia(call.key, waiting, call.routing.request, relay))
                return actions
            queue.pop(0)
            actions.extend(self._answer(call, waiting))
        call.media_queue = None
        self._forget_if_over(call)
        return actions

    @staticmethod
    def _relayed_before(call: Call, response: Response) -> bool:
        """A retransmitted 2xx (its ACK is late) gets the SDP the relay gave the first
        one, without asking the relay again."""
        relayed = call.relayed_2xx
        if relayed is None or not response.is_success or response.to.tag != relayed[0]:
            return False
        response.set_body(relayed[1])
        return True

    def _answer(self, call: Call, response: Response) -> list[ProxyAction]:
        actions: list[ProxyAction] = []
        if response.status >= 200 and not call.finished:
            call.finished = True
            self.active -= 1
            actions.append(Answered(call.routing.request.method, call.routing))
            actions.extend(self._call_ended(call, response))
        self.hooks.answering(response, call.routing)
        actions.extend(self._run(call.server.respond(response)))
        self._forget_if_over(call)
        return actions

    def _call_ended(self, call: Call, response: Response) -> list[ProxyAction]:
        """An INVITE that starts a call got its final answer: its record, and the end of
        its media at the relay when it failed (a CANCEL, Timer C, every branch failed)."""
        request = call.routing.request
        if request.method != "INVITE" or request.to.tag is not None:
            return []  # a re-INVITE: the call goes on whatever its answer
        actions: list[ProxyAction] = []
        relay = call.routing.media_relay
        if relay is not None and response.status >= 300:
            actions.append(EndMedia(relay, request.call_id))
        if self.records_calls and response.status not in (401, 407):  # a challenge: no call
            actions.append(self._record(call, response))
        return actions

    @staticmethod
    def _record(call: Call, response: Response) -> CallResult:
        request = call.routing.request
        answered = None
        if call.responses is not None:
            answered = next((b for b in call.responses.branches if b.response is response), None)
        caller = _from_uri(request)
        shown = caller
        if answered is not None and answered.request is not None:
            shown = _from_uri(answered.request) or caller
        destination = None
        if answered is not None:
            destination = answered.target.uri or (
                answered.request.uri_text if answered.request is not None else None
            )
        return CallResult(
            context=call.routing,
            call_id=request.call_id,
            caller_tag=request.from_.tag or "",
            callee_tag=response.to.tag or "",
            caller=caller,
            caller_shown=shown,
            callee=request.uri_text,
            destination=destination,
            gateway=answered.target.gateway if answered is not None else None,
            status=response.status,
            reason=response.reason,
        )


def _from_uri(request: Request) -> str:
    try:
        return str(request.from_.uri)
    except ParseError:
        return request.header("from") or ""


def response_destination(request: Request, peer: Peer) -> Destination:
    """Where responses to ``request`` go (§18.2.2, RFC 3581): over the connection it came
    on (TCP); for UDP to the source address, and the source port when ``rport`` was
    asked, else the Via's port."""
    if peer.transport == "tcp":
        return peer.reply_to
    via = request.top_via
    port = peer.port if via.has_rport else (via.port or SIP_PORT)
    local = (peer.local_host, peer.local_port)
    return _new_tuple(Destination, ("udp", peer.host, port, None, local))  # every field
