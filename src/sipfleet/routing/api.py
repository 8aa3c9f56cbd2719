"""The routing policy API: the typed equivalent of a kamailio.cfg route block.

The proxy validates a request (§16.3), removes its own Route (§16.4), then asks the
policy what to do with it. The policy returns a ``Decision``:

- ``Reply(status, reason, headers)``: answer it here.
- ``Relay(uris, headers)``: forward it, by its Route / Request-URI or to the given URIs.
- ``LocateUser(aor, serial)``: look the callee up in the location table and fork to
  every contact (404 when there is no such user, 480 when it has no binding).
- ``OffNet(capability, gateways)``: a call off the network, handed to the LCR hook.

An operator's module exposes ``make_policy(config) -> RoutingPolicy`` (or a ready
``POLICY`` object) and names itself in ``[proxy] policy``. See docs/routing-api.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sipfleet.config.load import ConfigError
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Request, Response
from sipfleet.sip.uri import SipUri
from sipfleet.storage.model import Aor

if TYPE_CHECKING:
    from sipfleet.config import Config
    from sipfleet.transport.base import Peer

Header = tuple[str, str]


# -- decisions --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request with this final response."""

    status: int
    reason: str | None = None
    headers: tuple[Header, ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 699:
            raise ValueError(f"Reply needs a final status (200-699), not {self.status}")


@dataclass(frozen=True, slots=True)
class Relay:
    """Forward the request: to each of ``uris`` at once, or (none given) to where its
    Route set or Request-URI points. ``headers`` are added to every forwarded copy."""

    uris: tuple[str, ...] = ()
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class LocateUser:
    """Fork to the registered contacts of ``aor`` (None: the Request-URI's user@host),
    in parallel or, with ``serial``, by q-value groups (None: ``[proxy] serial_forking``).
    No binding: 480, or 404 when there is no such user; with ``hide_unknown`` 480 for
    both, for a caller who must not learn which users exist."""

    aor: Aor | None = None
    serial: bool | None = None
    headers: tuple[Header, ...] = ()
    hide_unknown: bool = False


@dataclass(frozen=True, slots=True)
class OffNet:
    """A call leaving the network: the off-net router (LCR) picks the trunks for
    ``capability`` (None: the router's default for the call). Without a router,
    ``gateways`` (Request-URIs) are tried one after another; with none, 404."""

    capability: int | None = None
    gateways: tuple[str, ...] = ()
    headers: tuple[Header, ...] = ()


Decision = Reply | Relay | LocateUser | OffNet


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The caller proved it is ``username`` of ``domain`` (digest, RFC 3261 §22.3)."""

    username: str
    domain: str


# -- what the policy may ask of the proxy -------------------------------------------------
class CallServices(Protocol):
    """Implemented by the proxy engine; a policy uses it through ``CallContext``."""

    def is_local_domain(self, host: str) -> bool: ...

    def is_trusted_peer(self, host: str) -> bool: ...

    async def authenticate(self, call: CallContext) -> Authenticated | Reply: ...

    async def preferences(self, username: str, domain: str) -> dict[str, str]: ...


class CallContext:
    """One request being routed, and the helpers a policy needs.

    ``request`` is the request after §16.4 (our own Route removed); edits to it go to
    every forwarded copy, but prefer ``add_header`` or a decision's ``headers``.
    """

    __slots__ = (
        "_caller_preferences",
        "_services",
        "arrived",
        "extra_headers",
        "hide_caller",
        "media_relay",
        "origin",
        "our_route",
        "relay_media",
        "request",
        "routed_to_us",
        "source",
    )

    def __init__(
        self,
        request: Request,
        source: Peer,
        services: CallServices,
        *,
        origin: str | None = None,
        routed_to_us: bool = False,
        our_route: SipUri | None = None,
    ) -> None:
        self.request = request
        self.source = source  # the previous hop (often an LB)
        self.origin = origin or source.host  # the caller's own address, past our LB
        self.routed_to_us = routed_to_us  # it came through a Route of ours: in a dialog we are in
        # The URI of that Route of ours (§16.4 removed it): what the proxy put in its
        # Record-Route comes back here (the sealed caller identity of a private call).
        self.our_route = our_route
        # Caller privacy (DESIGN §4): True hides the caller from the callee, False never
        # does; None (the default) follows the request's Privacy header.
        self.hide_caller: bool | None = None
        # Media relay (docs/media.md): True relays this call's media, False never does;
        # None (the default) follows ``[media] mode``.
        self.relay_media: bool | None = None
        # The proxy's own notes: the relay holding the call's media (its configured name),
        # and when the request arrived (unix seconds, for the call record).
        self.media_relay: str | None = None
        self.arrived: float | None = None
        self.extra_headers: list[Header] = []
        self._services = services
        self._caller_preferences: dict[str, str] | None = None

    # -- facts ---------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.request.method

    @property
    def in_dialog(self) -> bool:
        """The To has a tag: the request belongs to an established dialog."""
        return self.request.to.tag is not None

    @property
    def caller_uri(self) -> SipUri | None:
        """The From URI when it is sip/sips."""
        try:
            uri = self.request.from_.uri
        except ParseError:
            return None
        return uri if isinstance(uri, SipUri) else None

    @property
    def callee_uri(self) -> SipUri | None:
        """The Request-URI when it is sip/sips."""
        uri = self.request.uri
        return uri if isinstance(uri, SipUri) else None

    def is_local_domain(self, host: str) -> bool:
        return self._services.is_local_domain(host)

    @property
    def caller_is_local(self) -> bool:
        """The From claims a domain this cluster serves (not proven until authenticated)."""
        uri = self.caller_uri
        return uri is not None and self.is_local_domain(uri.host_bare)

    @property
    def callee_is_local(self) -> bool:
        uri = self.callee_uri
        return uri is not None and self.is_local_domain(uri.host_bare)

    @property
    def from_trusted_peer(self) -> bool:
        """The request comes from a configured trusted peer (a gateway)."""
        return self._services.is_trusted_peer(self.origin)

    # -- helpers ----------------------------------------------------------------------------
    async def authenticate(self) -> Authenticated | Reply:
        """Check Proxy-Authorization: ``Authenticated``, or the 407 to answer."""
        return await self._services.authenticate(self)

    def caller_matches(self, who: Authenticated) -> bool:
        """The From user and domain are the authenticated account's."""
        uri = self.caller_uri
        return uri is not None and uri.user == who.username and uri.host_bare == who.domain

    async def preferences(
        self, username: str | None = None, domain: str | None = None
    ) -> dict[str, str]:
        """The user's ``usr_preferences`` (default: the caller's)."""
        uri = self.caller_uri
        user = username if username is not None else (uri.user if uri else None)
        host = domain if domain is not None else (uri.host_bare if uri else None)
        if not user or not host:
            return {}
        callers = username is None and domain is None
        if callers and self._caller_preferences is not None:
            return self._caller_preferences  # read once per request (privacy, LCR)
        found = await self._services.preferences(user, host)
        if callers:
            self._caller_preferences = found
        return found

    def add_header(self, name: str, value: str) -> None:
        """Add a header to every copy forwarded for this request."""
        self.extra_headers.append((name, value))


# -- the policy ------------------------------------------------------------------------------
class RoutingPolicy:
    """Subclass and implement ``route``; ``on_failure`` is optional."""

    async def route(self, call: CallContext) -> Decision:
        raise NotImplementedError

    async def on_failure(self, call: CallContext, response: Response) -> Decision | None:
        """Every branch failed and ``response`` would go upstream. Return a new decision
        (forward elsewhere: voicemail, another trunk) or None to send ``response``.
        Not called after a CANCEL, a 2xx or a 6xx."""
        return None

    @property
    def handles_failure(self) -> bool:
        return type(self).on_failure is not RoutingPolicy.on_failure


@dataclass(frozen=True, slots=True)
class OffNetTrunk:
    """One trunk of an off-net call: the Request-URI to send to, the gateway's name (the
    engine reports how the attempt ended under it) and how long the trunk may take to ring
    or answer before the next one is tried (None: only Timer C applies)."""

    uri: str
    gateway: str | None = None
    timeout: float | None = None


class OffNetRouter(Protocol):
    """What the LCR plugs in: the trunks of a call in the order to try them (plain URIs
    or ``OffNetTrunk``), or a ``Reply`` when it refuses the call; and how each attempt
    on a named gateway ended, for its health."""

    async def trunks(
        self, call: CallContext, capability: int | None
    ) -> Sequence[str | OffNetTrunk] | Reply: ...

    def trunk_ended(self, gateway: str, status: int, progressed: bool) -> None:
        """The attempt on ``gateway`` ended with ``status`` (408: no answer in time,
        503: transport error); ``progressed``: it had rung or sent early media (18x)."""


def load_policy(module_name: str, config: Config) -> RoutingPolicy:
    """Import ``module_name`` and get its policy: ``make_policy(config)`` or ``POLICY``.
    Raises ConfigError naming ``proxy.policy`` when the module offers neither."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"proxy.policy: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, "make_policy", None)
    policy = factory(config) if callable(factory) else getattr(module, "POLICY", None)
    if not isinstance(policy, RoutingPolicy):
        raise ConfigError(
            f"proxy.policy: {module_name} must define make_policy(config) or POLICY "
            "returning a sipfleet.routing.api.RoutingPolicy"
        )
    return policy
