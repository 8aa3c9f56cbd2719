"""What the proxy core (``core.py``) asks of its shell: small values, made and read once
(plain slotted dataclasses, not frozen ones: see sip/transaction/actions.py).

Besides these, the core passes on the transaction layer's own ``Send``, ``StartTimer``
and ``CancelTimer`` (``sip.transaction``): one timer system for the transaction timers
and Timer C (``Timer.C``, armed on the branch's client transaction). Each action names
what the shell feeds back, if anything:

- ``Send(transaction, message)``: send to ``transaction.peer``; a failure comes back
  as ``send_failed(transaction, 503)`` (513 when too large for a datagram).
- ``StartTimer(transaction, timer, delay)``: arm, or re-arm when armed;
  ``timer_fired(transaction, timer)`` when it fires. ``CancelTimer``: disarm.
- ``Transmit(message, destination)``: send outside any transaction (a shed 503).
- ``AskPolicy(call, context, failed)``: the policy's ``route`` (``on_failure`` when
  ``failed``), then the plan (the lookup); ``routed(call, outcome)``.
- ``Resolve(ref, uri)``: locate the host (RFC 3263); ``resolved(ref, destinations or
  error)``, the destinations in the order to try them.
- ``ForwardAck(ack, peer, destination)``, ``ForwardResponse(response, peer)``: forward
  without state (a 2xx ACK, a stray 2xx).
- ``TrunkOutcome(gateway, status, progressed)``: for the off-net router (gateway health).
- ``DestinationDown(destination)``: it timed out or failed in transport; the resolver
  tries it last for a while (fire and forget).
- ``Unmatched(response)``: a stray answer, perhaps to an OPTIONS probe.
- ``RelayMedia(call, response, request)``: have the call's media relay rewrite the SDP
  of ``response`` (to ``request``); ``media_rewritten(call, response, sdp or None)``.
  The call's later answers wait behind it, in order.
- ``EndMedia(relay, call_id)``: the call is over for the relay (fire and forget).
- ``CallResult(...)``: an INVITE got its final answer: for its call record (accounting).
- ``Answered(method, context)``: a request got its final answer (its duration, a metric).
"""

from __future__ import annotations

from dataclasses import dataclass

from sipfleet.core.proxy.targets import ForkPlan
from sipfleet.routing.api import CallContext, Reply
from sipfleet.sip.message import Message, Request, Response
from sipfleet.sip.transaction import CancelTimer, Key, Send, StartTimer
from sipfleet.sip.uri import Uri
from sipfleet.transport.base import Destination, Peer

CallKey = Key  # a call is known by its server transaction's key
Outcome = ForkPlan | Reply | None  # what routing gave: targets, an answer, or (failure hook) none


@dataclass(slots=True)
class Transmit:
    """Send ``message`` to ``destination`` outside any transaction."""

    message: Message
    destination: Destination


@dataclass(slots=True)
class AskPolicy:
    """Route ``call``: the policy's decision turned into a plan (a lookup, the LCR).
    ``failed``: every branch failed with this best response; ask the failure hook."""

    call: CallKey
    context: CallContext
    failed: Response | None = None

    def __init__(self, call: CallKey, context: CallContext, failed: Response | None = None) -> None:
        """Written out, as for every dataclass made per request: the one @dataclass
        generates runs as interpreted code in the compiled build (mypyc)."""
        self.call = call
        self.context = context
        self.failed = failed


@dataclass(slots=True)
class Resolve:
    """Find the transport destinations of ``uri`` (a host name), in the order to try."""

    ref: int
    uri: Uri


@dataclass(slots=True)
class ForwardAck:
    """An ACK for a 2xx, forwarded without state (its own transaction, §16.7);
    ``relay``: the media relay of its dialog (an SDP answer in the ACK goes through it)."""

    ack: Request
    peer: Peer
    destination: Destination
    relay: str | None = None


@dataclass(slots=True)
class ForwardResponse:
    """A 2xx that no transaction knows (a retransmission after ours ended)."""

    response: Response
    peer: Peer


@dataclass(slots=True)
class TrunkOutcome:
    """The attempt on an off-net trunk ended (DESIGN §3: the gateway's health)."""

    gateway: str
    status: int
    progressed: bool  # it had rung (a provisional response other than 100)


@dataclass(slots=True)
class Unmatched:
    """A response no transaction knows and not a 2xx (an OPTIONS probe's answer?)."""

    response: Response


@dataclass(slots=True)
class RelayMedia:
    """Rewrite the SDP of ``response`` (an answer to ``request``, or a late offer) at the
    call's media relay before it goes upstream."""

    call: CallKey
    response: Response
    request: Request
    relay: str


@dataclass(slots=True)
class EndMedia:
    """The call ``call_id`` at ``relay`` is over (failed, cancelled, Timer C)."""

    relay: str
    call_id: str


@dataclass(slots=True)
class CallResult:
    """How an INVITE that created no dialog yet ended, for its call record. The shell
    adds the times: when the INVITE arrived (``context.arrived``) and now."""

    context: CallContext
    call_id: str
    caller_tag: str
    callee_tag: str
    caller: str  # the From as the caller sent it
    caller_shown: str  # the From the callee saw (anonymised or not)
    callee: str  # the Request-URI the caller dialled
    destination: str | None  # the Request-URI of the branch that answered
    gateway: str | None  # its LCR gateway
    status: int
    reason: str


@dataclass(slots=True)
class Answered:
    """The request of ``context`` got its final answer from the proxy."""

    method: str
    context: CallContext


@dataclass(slots=True)
class DestinationDown:
    """A branch's ``destination`` timed out or failed in transport."""

    destination: Destination


ProxyAction = (
    Send
    | StartTimer
    | CancelTimer
    | Transmit
    | AskPolicy
    | Resolve
    | ForwardAck
    | ForwardResponse
    | TrunkOutcome
    | DestinationDown
    | Unmatched
    | RelayMedia
    | EndMedia
    | CallResult
    | Answered
)
