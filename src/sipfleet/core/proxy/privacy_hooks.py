"""Caller privacy in the proxy (DESIGN §4; RFC 3323, RFC 3325): the ``MessageHooks``.

A private call: ``CallContext.hide_caller`` is True (the policy, e.g. the caller's
``clir`` preference), or it is None and the request says ``Privacy: id`` / ``header`` /
``user``. Then, for the dialog-creating request:

- our Record-Route gets ``;pv=<sealed>``: the caller's From, asserted identities, Contact
  user and the hop toward it, sealed (ChaCha20-Poly1305, key from the cluster secret,
  bound to the Call-ID) by ``sip.privacy.PrivacySeal``;
- each forwarded copy reaches the callee as ``"Anonymous" <sip:anonymous@anonymous.invalid>``
  with the caller's tag, without identity headers; a trusted next hop (``[proxy]
  trusted_peers``, an LCR gateway flagged trusted) gets ``P-Asserted-Identity`` and
  ``Privacy: id`` instead; CANCEL and the ACK of a non-2xx are built from that copy;
- every response to the caller carries its own From again.

Every later request of the dialog comes back with our Route, at whichever proxy of the
pool the LB hands it to: ``CallContext.our_route`` (``forwarding_ack`` for a 2xx ACK)
holds the sealed value, any proxy holding the cluster secret opens it, and the tags
tell the direction. From the caller: From (and Contact user) hidden again. From the
callee: the caller's identity goes into To (and its Contact user into the Request-URI),
but only when the request goes on toward the caller's hop, so a callee cannot make the
proxy send the identity anywhere else. The responses are fixed the other way round.

A value that does not open (altered, foreign, moved to another call) is ignored and
logged (rate-limited): nothing from it ever reaches a header. A ``P-Asserted-Identity``
the caller's phone sent is not passed on as an assertion (RFC 3325 §5) unless the
request came from a trusted peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from sipfleet.core.proxy.addresses import default_port
from sipfleet.core.proxy.hooks import MessageHooks
from sipfleet.routing.api import CallContext
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Request, Response
from sipfleet.sip.privacy import (
    ROUTE_PARAM,
    Direction,
    HiddenIdentity,
    PrivacySeal,
    continues_toward_caller,
    direction_of,
    hide_caller,
    identity_of,
    privacy_requested,
    rewrite_in_dialog,
    rewrite_response,
)
from sipfleet.sip.uri import SipUri, Uri
from sipfleet.storage.lcr_rows import Gateway
from sipfleet.transport.sockets import normalise_host

if TYPE_CHECKING:
    from sipfleet.config import Config

log = logging.getLogger("sipfleet.privacy")
WARNING_INTERVAL_S = 10.0


def _host_key(host: str) -> str:
    return normalise_host(host).lower()


class TrustedHops:
    """Next hops that may learn a hidden caller's identity (RFC 3325 §9.3: within the trust
    domain): ``[proxy] trusted_peers`` by host, LCR gateways flagged ``trusted`` by host
    and port. ``gateways`` returns the gateways of the current LCR table."""

    def __init__(
        self,
        peers: Iterable[str] = (),
        gateways: Callable[[], Iterable[Gateway]] | None = None,
    ) -> None:
        self.peers = frozenset(_host_key(peer) for peer in peers)
        self._gateways = gateways
        self._seen: object = None  # the gateway rows the set below was made from
        self._trusted_gateways: frozenset[tuple[str, int]] = frozenset()

    def trusts(self, uri: Uri) -> bool:
        if not isinstance(uri, SipUri):
            return False
        host = _host_key(uri.host_bare)
        if host in self.peers:
            return True
        port = uri.port if uri.port is not None else default_port(uri.scheme)
        return (host, port) in self._gateway_set()

    def _gateway_set(self) -> frozenset[tuple[str, int]]:
        if self._gateways is None:
            return frozenset()
        rows = self._gateways()
        if rows is not self._seen:  # the LCR table was reloaded
            self._seen = rows
            self._trusted_gateways = frozenset(
                (_host_key(gw.host), gw.port if gw.port is not None else default_port("sip"))
                for gw in rows
                if gw.trusted
            )
        return self._trusted_gateways


class PrivacyHooks(MessageHooks):
    def __init__(
        self,
        seal: PrivacySeal,
        trusted: TrustedHops | None = None,
        *,
        hide_contact_user: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seal = seal
        self.trusted = trusted or TrustedHops()
        self.hide_contact_user = hide_contact_user
        self.clock = clock
        self.refused = 0  # sealed values that did not open
        self.not_restored = 0  # callee's requests that did not go on toward the caller
        self._notices = {
            "refused": RateLimitedWarning(
                "privacy: %d Route pv= value(s) ignored: altered, foreign or from another "
                "call (last: %s %s)",
                clock,
            ),
            "not-restored": RateLimitedWarning(
                "privacy: %d request(s) from a callee not going on toward the caller: the "
                "caller's identity was not restored (last: %s %s)",
                clock,
            ),
        }

    @classmethod
    def from_config(
        cls, config: Config, gateways: Callable[[], Iterable[Gateway]] | None = None
    ) -> PrivacyHooks:
        """The key from ``node.cluster_secret`` (the same on every proxy of the pool);
        ``gateways``: the current LCR gateways, for the ones flagged trusted."""
        return cls(
            PrivacySeal(config.node.cluster_secret.encode()),
            TrustedHops(config.proxy.trusted_peers, gateways),
            hide_contact_user=config.proxy.privacy_hide_contact_user,
        )

    # -- which calls ---------------------------------------------------------------------------
    @staticmethod
    def hides(call: CallContext) -> bool:
        """A new request whose caller is to be hidden from the callee. Asked for every
        message of every call, private or not: a request without a Privacy header is
        answered here, without the call into sip.privacy (not compiled)."""
        request = call.request
        return not _within_dialog(request) and _hides_new(call, request)

    def _identity(self, call: CallContext) -> HiddenIdentity:
        identity = identity_of(call.request, hide_contact_user=self.hide_contact_user)
        if identity.asserted and not call.from_trusted_peer:
            # RFC 3325 §5: an identity asserted by a phone is not an assertion; a trusted
            # hop gets the (authenticated) From URI instead
            identity = replace(identity, asserted=())
        return identity

    # -- MessageHooks ------------------------------------------------------------------------------
    def record_route(self, call: CallContext, ours: str) -> str:
        if not self.hides(call):
            return ours
        sealed = self.seal.seal(self._identity(call), call.request.call_id)
        param = f";{ROUTE_PARAM}={sealed}"
        return ours[:-1] + param + ">" if ours.endswith(">") else ours + param

    def forwarding(self, request: Request, call: CallContext | None) -> None:
        if call is None:
            return
        if _within_dialog(call.request):
            identity = self._opened(call.our_route, call.request)
            if identity is not None:
                self._in_dialog(request, identity)
        elif _hides_new(call, call.request):
            hide_caller(request, self.trusted.trusts(_next_hop(request)), self._identity(call))

    def forwarding_ack(self, ack: Request, our_route: SipUri) -> None:
        identity = self._opened(our_route, ack)
        if identity is not None:
            self._in_dialog(ack, identity)

    def leaves_ack(self, our_route: SipUri) -> bool:
        """Only an ACK whose Route of ours carries a sealed identity is rewritten."""
        return ROUTE_PARAM not in our_route.params

    def answering(self, response: Response, call: CallContext) -> None:
        if _within_dialog(call.request):
            identity = self._opened(call.our_route, call.request)
            if identity is None:
                return
            direction = direction_of(call.request, identity)
            if direction is not None:
                rewrite_response(response, identity, direction)
        elif _hides_new(call, call.request):
            rewrite_response(response, self._identity(call), Direction.TO_CALLEE)

    # -- pieces ------------------------------------------------------------------------------------
    def _in_dialog(self, request: Request, identity: HiddenIdentity) -> None:
        direction = direction_of(request, identity)
        if direction is None:
            log.debug("%r: tags of another dialog, left as it is", request)
            return
        if direction is Direction.TO_CALLER and not continues_toward_caller(request, identity):
            self.not_restored += 1
            self._notices["not-restored"].note(request)
            return
        rewrite_in_dialog(request, identity, direction)

    def _opened(self, route: SipUri | None, request: Request) -> HiddenIdentity | None:
        """The identity sealed in our Route, None when there is none or it does not open."""
        if route is None or ROUTE_PARAM not in route.params:
            return None
        value = route.params.get(ROUTE_PARAM) or ""
        try:
            call_id = request.call_id
        except ParseError:
            return None
        identity = self.seal.open(value, call_id)
        if identity is None:
            self.refused += 1
            self._notices["refused"].note(request)
        return identity


class RateLimitedWarning:
    """One warning per interval with the count since the last one: a peer sending bad
    values cannot flood the log."""

    def __init__(self, text: str, clock: Callable[[], float]) -> None:
        self.text = text
        self.clock = clock
        self.unlogged = 0
        self.logged_at = -WARNING_INTERVAL_S

    def note(self, request: Request) -> None:
        self.unlogged += 1
        now = self.clock()
        if now - self.logged_at < WARNING_INTERVAL_S:
            return
        log.warning(self.text, self.unlogged, request.method, request.call_id)
        self.logged_at = now
        self.unlogged = 0


def _within_dialog(request: Request) -> bool:
    """``CallContext.in_dialog`` of the call of ``request``, without that property: this
    module is compiled and CallContext is not, so the property is an interpreted call."""
    return request.to.tag is not None


def _hides_new(call: CallContext, request: Request) -> bool:
    """``PrivacyHooks.hides`` for ``call``'s request (``request``) known to be outside a
    dialog: ``forwarding`` and ``answering`` have just tested that."""
    hide = call.hide_caller
    if hide is not None:
        return hide
    return request.has("privacy") and privacy_requested(request)


def _next_hop(request: Request) -> Uri:
    """Where a forwarded copy goes: its top Route, else its Request-URI."""
    try:
        top = request.top_route
        return top.uri if top is not None else request.uri
    except ParseError:
        return request.uri
