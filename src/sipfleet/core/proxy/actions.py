"""What the proxy core (``core.py``) asks of its shell: small immutable values.

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
- ``Resolve(ref, uri)``: look the host up; ``resolved(ref, destination or error)``.
- ``ForwardAck(ack, peer, destination)``, ``ForwardResponse(response, peer)``: forward
  without state (a 2xx ACK, a stray 2xx).
- ``TrunkOutcome(gateway, status, progressed)``: for the off-net router (gateway health).
- ``Unmatched(response)``: a stray answer, perhaps to an OPTIONS probe.
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


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``message`` to ``destination`` outside any transaction."""

    message: Message
    destination: Destination


@dataclass(frozen=True, slots=True)
class AskPolicy:
    """Route ``call``: the policy's decision turned into a plan (a lookup, the LCR).
    ``failed``: every branch failed with this best response; ask the failure hook."""

    call: CallKey
    context: CallContext
    failed: Response | None = None


@dataclass(frozen=True, slots=True)
class Resolve:
    """Find the transport destination of ``uri`` (a host name)."""

    ref: int
    uri: Uri


@dataclass(frozen=True, slots=True)
class ForwardAck:
    """An ACK for a 2xx, forwarded without state (its own transaction, §16.7)."""

    ack: Request
    peer: Peer
    destination: Destination


@dataclass(frozen=True, slots=True)
class ForwardResponse:
    """A 2xx that no transaction knows (a retransmission after ours ended)."""

    response: Response
    peer: Peer


@dataclass(frozen=True, slots=True)
class TrunkOutcome:
    """The attempt on an off-net trunk ended (DESIGN §3: the gateway's health)."""

    gateway: str
    status: int
    progressed: bool  # it had rung (a provisional response other than 100)


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A response no transaction knows and not a 2xx (an OPTIONS probe's answer?)."""

    response: Response


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
    | Unmatched
)
