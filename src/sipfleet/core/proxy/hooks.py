"""Where a message-rewriting feature (caller privacy, DESIGN §4) plugs into the engine.

The engine calls these for every message it sends on: each forwarded copy of a request
(before our Via goes on), each 2xx ACK it forwards statelessly, each response it sends
upstream, and for our Record-Route value. What our Record-Route carried comes back in
``CallContext.our_route`` (and to ``forwarding_ack``) for every later request of the
dialog, at whichever proxy of the pool it arrives. The default does nothing. A feature
subclasses ``MessageHooks`` and is passed to ``ProxyEngine``.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from sipfleet.routing.api import CallContext
from sipfleet.sip.message import Request, Response
from sipfleet.sip.uri import SipUri


# compiled (sipfleet.native), and subclassed by features compiled or not (tests record with one)
@mypyc_attr(allow_interpreted_subclasses=True)
class MessageHooks:
    def record_route(self, call: CallContext, ours: str) -> str:
        """The Record-Route value to add for ``call`` (``ours``: ``<sip:host:port;lr>``);
        a feature may add a parameter it needs back in later requests of the dialog."""
        return ours

    def forwarding(self, request: Request, call: CallContext | None) -> None:
        """``request`` goes downstream (``call`` is None for a stateless 2xx ACK)."""

    def forwarding_ack(self, ack: Request, our_route: SipUri) -> None:
        """A 2xx ACK goes downstream without state; ``our_route``: the URI of the Route
        of ours it came by (removed, §16.4), parameters included. The default passes it
        to ``forwarding`` with no call."""
        self.forwarding(ack, None)

    def leaves_ack(self, our_route: SipUri) -> bool:
        """Whether ``forwarding_ack`` leaves a 2xx ACK that came by ``our_route`` as it is,
        changing and counting nothing: then the proxy may send it from its bytes
        (core/proxy/fastack.py). Asked once per Route URI with its ``dt`` value aside
        (memoised): the answer must depend on nothing else. The default: True unless a
        subclass overrides ``forwarding_ack`` or ``forwarding`` (and not this)."""
        kind = type(self)
        return (
            kind.forwarding_ack is MessageHooks.forwarding_ack
            and kind.forwarding is MessageHooks.forwarding
        )

    def answering(self, response: Response, call: CallContext) -> None:
        """``response`` goes upstream to the sender of ``call.request``."""


NO_HOOKS = MessageHooks()
