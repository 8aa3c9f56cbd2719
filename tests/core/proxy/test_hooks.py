"""MessageHooks' default ``leaves_ack``: whether a 2xx ACK may go out from its bytes. It reads
which methods a subclass overrides, so it is checked here for the class as built (compiled
by sipfleet.native, its subclasses compiled or not)."""

from __future__ import annotations

from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.core.proxy.privacy_hooks import PrivacyHooks
from sipfleet.routing.api import CallContext
from sipfleet.sip import Request, Response
from sipfleet.sip.privacy import PrivacySeal
from sipfleet.sip.uri import SipUri, parse_uri


def route(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


OURS = route("sip:192.0.2.10:5080;lr")
SEALED = route("sip:192.0.2.10:5080;lr;pv=sealed")


class AnswersOnly(MessageHooks):
    def answering(self, response: Response, call: CallContext) -> None:
        response.add_header("X-Seen", "yes")


class Forwards(MessageHooks):
    def forwarding(self, request: Request, call: CallContext | None) -> None:
        request.add_header("X-Seen", "yes")


class ForwardsAcks(MessageHooks):
    def forwarding_ack(self, ack: Request, our_route: SipUri) -> None:
        ack.add_header("X-Seen", "yes")


def test_the_default_and_hooks_leaving_requests_alone_leave_acks() -> None:
    assert NO_HOOKS.leaves_ack(OURS)
    assert AnswersOnly().leaves_ack(OURS)


def test_hooks_that_change_forwarded_requests_do_not_leave_acks() -> None:
    assert not Forwards().leaves_ack(OURS)
    assert not ForwardsAcks().leaves_ack(OURS)


def test_privacy_leaves_only_acks_without_a_sealed_identity() -> None:
    privacy = PrivacyHooks(PrivacySeal(b"pool-secret"))
    assert privacy.leaves_ack(OURS)
    assert not privacy.leaves_ack(SEALED)
