"""The proxy shell's side of the media relay (docs/media.md): the offer before a call
forks, the answers on their way back (``RelayMedia``), an ACK's late answer, the end.

A relay that fails a command costs that message its rewrite, never the call: the SDP goes
on as it came (logged, counted), as with no relay at all.
"""

from __future__ import annotations

import logging
import time

from sipfleet.core.proxy.actions import Outcome, RelayMedia
from sipfleet.core.proxy.media import (
    MediaMode,
    MediaTurn,
    ack_turn,
    carries_sdp,
    relay_of,
    request_turn,
    response_turn,
    wants_relay,
)
from sipfleet.core.proxy.targets import ForkPlan
from sipfleet.media.client import MediaRelays
from sipfleet.media.errors import MediaRelayError
from sipfleet.media.relays import RelayAddress
from sipfleet.routing.api import CallContext
from sipfleet.sip.message import Message, Request

log = logging.getLogger(__name__)
NO_RELAY_WARNING_INTERVAL_S = 60.0
OFFERED_IN = ("INVITE", "UPDATE")  # requests whose SDP is an offer (PRACK's is left alone)


class MediaControl:
    def __init__(self, relays: MediaRelays, mode: MediaMode) -> None:
        self.relays = relays
        self.mode = mode
        self.relayed = 0  # calls whose media went through a relay
        self.unrelayed = 0  # calls that wanted a relay and had none up
        self.failures = 0  # commands a relay failed (the SDP went on unchanged)
        self.names: tuple[str, ...] = ()  # the configured relays, for the log
        self._warned_at = -NO_RELAY_WARNING_INTERVAL_S

    async def prepare(self, context: CallContext, outcome: Outcome) -> None:
        """Before the request is forwarded: a new call that wants a relay gets one (and its
        offer rewritten); a request of a relayed dialog finds its relay by our Route."""
        request = context.request
        if context.in_dialog:
            await self._in_dialog(context)
        elif request.method == "INVITE" and isinstance(outcome, ForkPlan):
            await self._new_call(context, outcome)

    async def _new_call(self, context: CallContext, plan: ForkPlan) -> None:
        if not wants_relay(self.mode, context, plan):
            return
        relay = self.relays.pick(context.request.call_id)
        if relay is None:
            self._no_relay(context.request.call_id)
            return
        if carries_sdp(context.request) and not await self._offer(relay, context):
            return
        context.media_relay = relay.name  # our Record-Route carries it from here on
        self.relayed += 1

    def _no_relay(self, call_id: str) -> None:
        """Counted always, logged once a minute: without rtpengine every NATed call
        would log it."""
        self.unrelayed += 1
        now = time.monotonic()
        if now - self._warned_at >= NO_RELAY_WARNING_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "no media relay is up (%s): call %s and other NATed calls go with direct "
                "media (%d so far)",
                ", ".join(self.names),
                call_id,
                self.unrelayed,
            )

    async def _in_dialog(self, context: CallContext) -> None:
        name = relay_of(context.our_route) if context.routed_to_us else None
        relay = self.relays.named(name) if name is not None else None
        if relay is None:
            return
        context.media_relay = relay.name
        request = context.request
        if request.method in OFFERED_IN and carries_sdp(request):
            await self._offer(relay, context)

    async def _offer(self, relay: RelayAddress, context: CallContext) -> bool:
        request = context.request
        sdp = await self._rewrite(relay, request, request_turn(request), context.origin)
        if sdp is None:
            return False
        request.set_body(sdp)
        return True

    async def answer(self, step: RelayMedia) -> bytes | None:
        """The relay's SDP for a response on its way upstream (None: unchanged)."""
        relay = self.relays.named(step.relay)
        if relay is None:
            return None
        turn = response_turn(step.response, step.request)
        return await self._rewrite(relay, step.response, turn, None)

    async def ack(self, ack: Request, name: str) -> None:
        """An ACK's SDP (the answer to a late offer) through the dialog's relay."""
        relay = self.relays.named(name)
        if relay is None or not carries_sdp(ack):
            return
        sdp = await self._rewrite(relay, ack, ack_turn(ack), None)
        if sdp is not None:
            ack.set_body(sdp)

    async def end(self, name: str, call_id: str) -> None:
        relay = self.relays.named(name)
        if relay is None:
            return
        try:
            await self.relays.delete(relay, call_id=call_id)
        except MediaRelayError as exc:
            self.failures += 1
            log.warning("media relay %s: delete of call %s failed: %s", name, call_id, exc)

    async def _rewrite(
        self, relay: RelayAddress, message: Message, turn: MediaTurn, origin: str | None
    ) -> bytes | None:
        call_id = message.call_id
        try:
            if turn.command == "offer":
                return await self.relays.offer(
                    relay,
                    call_id=call_id,
                    from_tag=turn.from_tag,
                    to_tag=turn.to_tag,
                    sdp=message.body,
                    received_from=origin,
                )
            return await self.relays.answer(
                relay,
                call_id=call_id,
                from_tag=turn.from_tag,
                to_tag=turn.to_tag or "",
                sdp=message.body,
                received_from=origin,
            )
        except MediaRelayError as exc:
            self.failures += 1
            log.warning(
                "media relay %s: %s of call %s failed: %s", relay.name, turn.command, call_id, exc
            )
            return None

    def counters(self) -> dict[str, int]:
        return {
            "media_relayed": self.relayed,
            "media_unrelayed": self.unrelayed,
            "media_failures": self.failures,
        }
