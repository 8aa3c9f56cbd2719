"""What the proxy decides about a call's media, with no I/O (docs/media.md).

- Whether a call's media goes through a relay: by the policy's say, else ``[media] mode``;
  in mode "nat", when either side looks to be behind NAT.
- Which relay holds a dialog's media: its name rides in our Record-Route (``;mr=``), so
  every later request of the dialog, at whichever proxy of the pool, finds the relay
  without any table of calls.
- Who offered and who answers, for the relay's tags: the offer's sender is the relay's
  "from-tag" party.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sipfleet.core.proxy.targets import ForkPlan, Target
from sipfleet.routing.api import CallContext
from sipfleet.routing.nat import is_private
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Message, Request, Response
from sipfleet.sip.uri import SipUri, parse_uri

RELAY_PARAM = "mr"
MediaMode = Literal["nat", "always", "never"]


def carries_sdp(message: Message) -> bool:
    """The body is an SDP (a multipart body is left alone: rare, and not relayed)."""
    if not message.body:
        return False
    content_type = message.content_type
    return content_type is not None and content_type.lower().startswith("application/sdp")


def relay_of(our_route: SipUri | None) -> str | None:
    """The relay named in the Route of ours a request came by (None: not relayed)."""
    if our_route is None:
        return None
    return our_route.params.get(RELAY_PARAM) or None


def with_relay(record_route: str, relay: str) -> str:
    """Our ``<sip:...;lr;dt=...>`` with the relay's name as one more URI parameter."""
    param = f";{RELAY_PARAM}={relay}"
    if record_route.endswith(">"):
        return record_route[:-1] + param + ">"
    return record_route + param


def sdp_addresses(body: bytes) -> list[str]:
    """The connection addresses of an SDP (``c=IN IP4 …`` session and media lines)."""
    found = []
    for line in body.split(b"\n"):
        if line.startswith(b"c="):
            words = line[2:].decode("latin-1").split()
            if len(words) >= 3:
                found.append(words[2].split("/")[0])  # a multicast TTL suffix goes
    return found


def wants_relay(mode: MediaMode, context: CallContext, plan: ForkPlan) -> bool:
    """Relay this new call's media? The policy's say first, then the mode."""
    if context.relay_media is not None:
        return context.relay_media
    if mode != "nat":
        return mode == "always"
    return caller_behind_nat(context) or any(
        target_behind_nat(target) for group in plan.groups for target in group
    )


def caller_behind_nat(context: CallContext) -> bool:
    """The caller offers media at a private address, or at another address than the one
    its signalling came from (past our LB: ``origin``), or its Contact is private."""
    request = context.request
    if carries_sdp(request):
        for address in sdp_addresses(request.body):
            if is_private(address) or address != context.origin:
                return True
    try:
        contacts = request.contacts
    except ParseError:
        return False
    return any(isinstance(c.uri, SipUri) and is_private(c.uri.host_bare) for c in contacts)


def target_behind_nat(target: Target) -> bool:
    """A callee reached past a NAT: its registration came from another address than its
    Contact (``received``), or its Contact is a private address."""
    if target.received is not None:
        return True
    if target.uri is None:
        return False
    try:
        uri = parse_uri(target.uri)
    except ParseError:
        return False
    return isinstance(uri, SipUri) and is_private(uri.host_bare)


@dataclass(frozen=True, slots=True)
class MediaTurn:
    """One SDP for the relay: an ``offer`` or an ``answer``, with rtpengine's tags: the
    "from-tag" is always the party that made the offer."""

    command: Literal["offer", "answer"]
    from_tag: str
    to_tag: str | None


def request_turn(request: Request) -> MediaTurn:
    """A request's SDP is an offer, from its sender (INVITE, re-INVITE, UPDATE)."""
    return MediaTurn("offer", request.from_.tag or "", request.to.tag)


def response_turn(response: Response, request: Request) -> MediaTurn:
    """A response's SDP answers the request's offer; when the request had none (a late
    offer), it is the callee's offer, answered later in the ACK."""
    caller, callee = request.from_.tag or "", response.to.tag or ""
    if carries_sdp(request):
        return MediaTurn("answer", caller, callee)
    return MediaTurn("offer", callee, caller)


def ack_turn(ack: Request) -> MediaTurn:
    """An ACK's SDP answers the offer its 2xx made (the callee's: the ACK's To)."""
    return MediaTurn("answer", ack.to.tag or "", ack.from_.tag or "")
