"""Where a request goes and what it gets on the way: the LB's decisions, without I/O.

Direction follows the side a request came from, never an address match with a flow:

- **From a node of the cluster** (it arrived on the internal side, or, when the LB has one
  side, from the exact address and port of a registrar or proxy in the pools): a top Route
  of ours with a flow token sends it down that flow: the client's NAT binding (UDP), its
  connection (TCP or TLS, 430 Flow Failed when it is gone, handed to the worker that holds
  it; 430 too for a flow another LB made, RFC 5626 §5.3; a TLS client is only ever
  reached over its own connection), or,
  when the token says the client is reachable directly, its Request-URI, only when that
  names the flow's own IP address (no packet picks an address for us).
- **From a client** (anything else): it goes toward the cluster, our Route(s) removed. A
  flow token in them is checked (403 when it fails, a Record-Route's must belong to this
  dialog) but never followed: a client cannot send down another client's flow.

Toward the cluster: the next Route when it names a pool target that is not down or
disabled, else REGISTER to the registrar pool and everything else to the proxy pool,
chosen by Call-ID. REGISTER gets a Path and dialog-creating requests a Record-Route naming
the client's flow, bound to the dialog; crossing from one side of the LB to the other,
Record-Route is added twice (RFC 3261 §16.6 step 4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

from sipfleet.core.lb.keepalive import contact_digest
from sipfleet.core.lb.pools import Pools
from sipfleet.core.lb.sides import SideName, Sides
from sipfleet.routing.nat import any_private, behind_nat, contact_hosts, nat_evidence
from sipfleet.sip import Request, SipUri
from sipfleet.sip.address import Address
from sipfleet.sip.dialog_token import PARAM as DIALOG_PARAM
from sipfleet.sip.dialog_token import Dialog
from sipfleet.sip.flow import Flow, FlowTokens
from sipfleet.sip.headlines import alnum_besides
from sipfleet.sip.memo import Memo
from sipfleet.storage.model import LbPool
from sipfleet.transport.base import ACCEPTED_ONLY, Destination, Peer, TransportName
from sipfleet.transport.sockets import normalise_host

CONNECTION_BITS = 32
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
MAX_LEARNED_CONTACTS = 4  # contact digests carried in our Via of a REGISTER
RETRY_AFTER = "5"
MAX_ROUTE_URIS = 4096  # Route URIs read (by their text, see _route_uri_key)
# Contact lines read (see read_contacts): a phone's are the same at each refresh and call,
# so one entry a phone; memoised only up to MAX_CONTACTS_TEXT characters (bounded memory)
MAX_CONTACTS = 8192
MAX_CONTACTS_TEXT = 512
MAX_UDP_FLOWS = 4096  # UDP flows made (see _udp_flow)
CUT: Final = "\x00"  # starts a memo key with a part cut out (see _route_uri_key)
DIALOG_TOKEN: Final = f";{DIALOG_PARAM}="  # a proxy's dialog token (sip/dialog_token.py)


class RouteUri(NamedTuple):
    """What the Router reads of a Route's URI: whether it is a sip/sips URI naming one of
    our listeners, its host (bare) and port (5060 when none is written, as a pool target
    is looked up)."""

    sip: bool
    ours: bool
    host: str
    port: int


NOT_A_SIP_URI: Final = RouteUri(False, False, "", 0)


class ContactsRead(NamedTuple):
    """What the Router reads of a request's Contacts (``Router.read_contacts``)."""

    outbound: bool  # RFC 5626 (``_uses_outbound``)
    private_hosts: bool  # a Contact names a private host (False when outbound: not read)
    digests: str  # the first MAX_LEARNED_CONTACTS Contacts' digests, '.'-separated


class Forward(NamedTuple):  # a tuple: made for every request, so made cheaply
    destination: Destination
    sent_by: str  # our Via's host:port: the side the request leaves from
    pop_routes: int = 0
    record_routes: tuple[str, ...] = ()  # added in this order, each on top
    path: str | None = None
    via_params: str = ""


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    why: str | None = None  # logged: a refused token


@dataclass(frozen=True, slots=True)
class HandOff:
    """The flow's TCP connection lives in another worker: let it handle the request."""

    worker: int


@dataclass(frozen=True, slots=True)
class AnswerHere:
    """OPTIONS for the LB itself (a ping from a client or a monitor)."""


Decision = Forward | Reject | HandOff | AnswerHere


def connection_id(flow: Flow) -> int:
    return (flow.worker << CONNECTION_BITS) | flow.connection


class Router:
    def __init__(
        self,
        sides: Sides,
        tokens: FlowTokens,
        pools: Pools,
        *,
        lb_id: int,
        worker: int,
        has_connection: Callable[[int], bool],
    ) -> None:
        self.sides = sides
        self.tokens = tokens
        self.pools = pools
        self.lb_id = lb_id
        self.worker = worker
        self.has_connection = has_connection
        self._inside: dict[Destination, Forward] = {}  # pool target -> plain forward to it
        # see _read_route
        self._route_uris: Final = Memo[str, tuple[RouteUri, str | None]](MAX_ROUTE_URIS)
        self._contacts: Final = Memo[tuple[str, ...], ContactsRead](MAX_CONTACTS)
        self._udp_flows: Final = Memo[tuple[str, int, bool], Flow](MAX_UDP_FLOWS)

    def route(self, request: Request, peer: Peer) -> Decision:
        popped, token, after = self._our_routes(request)
        if token is not None:
            flow = self.tokens.decode(token, request.call_id, (request.from_.tag, request.to.tag))
            if flow is None:
                why = f"{request.method} from {peer.host}:{peer.port}: flow token refused"
                return Reject(403, "Invalid Flow Token", why=why)
            if self.from_cluster(peer):
                return self._to_client(request, peer, flow, popped)
        elif popped == 0 and request.method == "OPTIONS" and self._for_us(request):
            return AnswerHere()
        return self._to_cluster(request, peer, popped, after)

    def from_cluster(self, peer: Peer) -> bool:
        """A registrar or proxy sent it: it arrived on the internal side, or, with one
        side, from the exact UDP address of a pool target (every local process shares the
        loopback address on one host; only the nodes send from their listen ports)."""
        side = self.sides.arrived_on(peer.local_host, peer.local_port)
        if side is not None:
            return side == "internal"
        return peer.transport == "udp" and self.pools.at(peer.host, peer.port) is not None

    # -- toward a client ----------------------------------------------------------------
    def _to_client(self, request: Request, peer: Peer, flow: Flow, popped: int) -> Decision:
        if flow.lb != self.lb_id:
            # another LB's flow (RFC 5626 §5.3): its NAT binding or connection is not ours
            # to send on, and its connection number means another client here; 430 makes
            # the proxy try the phone's other flow
            return Reject(430, "Flow Failed")
        if flow.transport != "udp":  # TCP, TLS or WebSocket: its connection
            if flow.worker != self.worker:
                return HandOff(flow.worker)
            destination = self._over_tcp(request, flow)
            if destination is None:
                return Reject(430, "Flow Failed")  # RFC 5626 §5.3
        else:
            destination = self._over_udp(request, flow)
        record_routes: tuple[str, ...] = ()
        if self._creates_dialog(request):
            # the Path's flow, bound to the dialog this request creates
            token = self.tokens.encode(flow, Dialog.created_by(request))
            inbound = self._route_uri("internal", token, peer.transport, peer.host)
            outbound = self._route_uri(
                "external", token, destination.transport, flow.host, _is_sips(request)
            )
            record_routes = _record_routes(inbound, outbound)
        sent_by = self.sides.sent_by("external", destination.transport, destination.host)
        return Forward(destination, sent_by, popped, record_routes)

    def _over_tcp(self, request: Request, flow: Flow) -> Destination | None:
        """Its connection while it lasts; once closed, its Contact, unless it must be
        reached by the flow (outbound, NAT): then None."""
        connection = connection_id(flow)
        if self.has_connection(connection):
            return Destination(flow.transport, flow.host, flow.port, connection)
        if flow.reach_by_flow or flow.transport in ACCEPTED_ONLY:  # never opened from here
            return None
        return self._at_contact(request, flow)

    def _over_udp(self, request: Request, flow: Flow) -> Destination:
        local = self.sides.local("external", flow.host)
        at_flow = Destination("udp", flow.host, flow.port, None, local)
        if flow.reach_by_flow:
            return at_flow
        return self._at_contact(request, flow) or at_flow

    def _at_contact(self, request: Request, flow: Flow) -> Destination | None:
        """A client not behind NAT is reached at its Request-URI (its Contact: it may
        listen on another port, or transport, than it sends from), when that names the
        flow's own IP address; None when it names another host: no packet picks a host
        for us."""
        uri = request.uri
        if not isinstance(uri, SipUri) or normalise_host(uri.host_bare) != flow.host:
            return None
        if uri.transport == "tcp":
            return Destination("tcp", flow.host, uri.port or 5060)
        local = self.sides.local("external", flow.host)
        return Destination("udp", flow.host, uri.port or 5060, None, local)

    # -- toward the cluster ------------------------------------------------------------------
    def _to_cluster(
        self, request: Request, peer: Peer, popped: int, after: RouteUri | None = None
    ) -> Decision:
        method = request.method
        pool: LbPool = "registrar" if method == "REGISTER" else "proxy"
        destination = self._next_route(request, popped, after)
        if destination is None:
            target = self.pools.choose(pool, request.call_id, existing=self._under_way(request))
            if target is None:
                return Reject(503, f"No {pool} available", (("Retry-After", RETRY_AFTER),))
            destination = target.destination
        plain = self._plain(destination)
        if method == "REGISTER":
            return self._register(request, peer, plain.destination, plain.sent_by, popped)
        if not popped and method not in DIALOG_CREATING:
            return plain  # the common case: nothing to add or remove
        destination, sent_by = plain.destination, plain.sent_by
        record_routes: tuple[str, ...] = ()
        if self._creates_dialog(request):
            flow = self._client_flow(request, peer, _uses_outbound(request))
            dialog = Dialog.created_by(request)
            record_routes = self._toward_cluster_record_routes(
                flow, dialog, peer, destination, _is_sips(request)
            )
        return Forward(destination, sent_by, popped, record_routes)

    def _toward_cluster_record_routes(
        self, flow: Flow, dialog: Dialog, peer: Peer, destination: Destination, sips: bool
    ) -> tuple[str, ...]:
        """The Record-Route(s) of a dialog-creating request from a client: its flow's
        token bound to the dialog, naming the external side toward the client (sips when
        the request is for a sips URI) and the internal side toward ``destination``."""
        token = self.tokens.encode(flow, dialog)
        inbound = self._route_uri("external", token, peer.transport, peer.host, sips)
        outbound = self._route_uri("internal", token, destination.transport, destination.host)
        return _record_routes(inbound, outbound)

    def toward_cluster_created(
        self,
        call_id: str,
        from_tag: str,
        via: tuple[str, int],
        contacts: ContactsRead,
        sips: bool,
        peer: Peer,
    ) -> Forward | None:
        """What ``route`` decides for a dialog-creating request (INVITE, SUBSCRIBE,
        REFER) from a UDP client with no Route and no To tag, with Call-ID ``call_id``
        and From tag ``from_tag`` (not empty), whose top Via names ``via`` (host without
        brackets, port: 5060 when none is written) and whose Contact lines read as
        ``contacts`` (``read_contacts``), for a sips URI when ``sips``: the proxy pool's
        Forward with the Record-Route(s); None when ``route`` would answer 503 (no
        proxy). The LB's fast path asks this instead of ``route``."""
        plain = self.toward_proxies(call_id, False)  # no To tag: not under way
        if plain is None:
            return None
        flow = self._udp_client_flow(via, contacts, peer)
        destination = plain.destination
        record_routes = self._toward_cluster_record_routes(
            flow, Dialog(call_id, from_tag), peer, destination, sips
        )
        return Forward(destination, plain.sent_by, 0, record_routes)

    def read_contacts(self, lines: list[str]) -> ContactsRead:
        """Of a request whose Contact header lines are ``lines`` (``Name: value`` each,
        unfolded): whether it uses RFC 5626 outbound (``_uses_outbound``) and, when it
        does not, whether a Contact names a private host (``nat.any_private``; False
        when it does: not read then, as ``_client_flow`` does not read it), and the
        digests a REGISTER's Via carries (``_contact_digests``). Raises ParseError where
        ``request.contacts`` or a Contact's URI would.

        Memoised by the lines' text, which is all that is read (a phone's Contact is
        the same in each of its calls); what raised is not kept."""
        key = tuple(lines)
        known = self._contacts.table.get(key)
        if known is None:
            only = Request("INVITE", "", lines, ["contact"] * len(lines))
            outbound = _uses_outbound(only)
            private_hosts = False if outbound else any_private(contact_hosts(only))
            known = ContactsRead(outbound, private_hosts, _contact_digests(only))
            if sum(len(line) for line in lines) <= MAX_CONTACTS_TEXT:
                self._contacts.put(key, known)
        return known

    def toward_proxies(self, call_id: str, under_way: bool) -> Forward | None:
        """What ``route`` decides for a request from a client with no Route that is not
        a REGISTER and creates no dialog, with Call-ID ``call_id`` (``under_way``: see
        ``_under_way``): the proxy pool's plain Forward; None when ``route`` would answer
        503 (no proxy). The LB's fast path asks this instead of ``route``."""
        target = self.pools.choose("proxy", call_id, existing=under_way)
        return None if target is None else self._plain(target.destination)

    def toward_registrar(self, call_id: str) -> Forward | None:
        """The registrar pool's plain Forward for a new REGISTER from a client (no Route,
        no To tag, no target draining) with Call-ID ``call_id``; None when ``route``
        would answer 503 (no registrar). The LB's fast path asks this, then
        ``toward_registrar_registered`` for what the REGISTER gets on its way."""
        target = self.pools.choose("registrar", call_id)
        return None if target is None else self._plain(target.destination)

    def toward_registrar_registered(
        self, plain: Forward, via: tuple[str, int], contacts: ContactsRead, peer: Peer
    ) -> Forward:
        """What ``route`` decides for that REGISTER (``plain``: ``toward_registrar``'s),
        from a UDP client whose top Via names ``via`` (as in ``toward_cluster_created``)
        and whose Contact lines read as ``contacts`` (``read_contacts``)."""
        flow = self._udp_client_flow(via, contacts, peer)
        return self._registered(
            flow, contacts.outbound, contacts.digests, plain.destination, plain.sent_by, 0
        )

    def _udp_client_flow(self, via: tuple[str, int], contacts: ContactsRead, peer: Peer) -> Flow:
        """``_client_flow`` of a UDP client, from its top Via's address and its Contacts
        as read (``read_contacts``)."""
        nat = contacts.outbound or behind_nat(
            via[0], via[1], contacts.private_hosts, peer.host, peer.port
        )
        return self._udp_flow(peer.host, peer.port, nat)

    def _plain(self, destination: Destination) -> Forward:
        plain = self._inside.get(destination)
        if plain is None:
            plain = self._inside[destination] = self._inside_forward(destination)
        return plain

    def _inside_forward(self, destination: Destination) -> Forward:
        """How a request leaves toward ``destination`` (a pool target): from the internal
        side, which our Via names."""
        if destination.transport == "udp":
            destination = destination._replace(local=self.sides.local("internal", destination.host))
        return Forward(
            destination, self.sides.sent_by("internal", destination.transport, destination.host)
        )

    def _register(
        self, request: Request, peer: Peer, destination: Destination, sent_by: str, popped: int
    ) -> Forward:
        """Path (RFC 3327) with the client's flow token, naming the internal side (the
        proxies reach the client through it); the token and the Contacts' digests ride in
        our Via so the 2xx tells the keepalive table what was registered for how long."""
        outbound = _uses_outbound(request)
        flow = self._client_flow(request, peer, outbound)
        digests = _contact_digests(request)
        return self._registered(flow, outbound, digests, destination, sent_by, popped)

    def _registered(
        self,
        flow: Flow,
        outbound: bool,
        digests: str,
        destination: Destination,
        sent_by: str,
        popped: int,
    ) -> Forward:
        """The Forward to ``destination`` with the Path naming ``flow`` (``ob`` when
        the Contacts use outbound) and our Via's parameters: its token and the
        Contacts' ``digests``."""
        token = self.tokens.encode(flow)
        path = self.sides.route_uri(
            "internal", token, destination.transport, destination.host, ob=outbound
        )
        via_params = f";lbf={token};lbc={digests}" if digests else f";lbf={token}"
        return Forward(destination, sent_by, popped, path=path, via_params=via_params)

    def _next_route(
        self, request: Request, popped: int, after: RouteUri | None = None
    ) -> Destination | None:
        """The next Route after ours, when it names a pool target (only the pools decide
        where the LB sends; any other Route is left for the proxy to follow). A target
        that is down or disabled is passed over: its pool takes the request, by Call-ID,
        so a dialog outlives the proxy that Record-Routed it (the pool's proxies accept
        each other's Route, ``proxy.aliases``). ``after``: that Route, read already."""
        if popped == 0 and request.top_route is None:
            return None
        routes = request.routes  # every Route parsed: a bad one is refused (400), as ever
        if len(routes) <= popped:
            return None
        return self._route_target(
            after if after is not None else self._read_route(routes[popped])[0]
        )

    def _route_target(self, uri: RouteUri) -> Destination | None:
        """The pool target a Route's URI names, when it is up and enabled; else None."""
        if not uri.sip:
            return None
        target = self.pools.at(uri.host, uri.port)
        if target is None or target.health == "down" or target.state == "disabled":
            return None
        return target.destination

    def toward_cluster_routed(
        self, routes: list[Address], call_id: str, tags: tuple[str, str], under_way: bool
    ) -> tuple[int, Forward] | None:
        """What ``route`` decides for an in-dialog request from a client (not from the
        cluster, not REGISTER, a To tag, no target draining) whose Routes are ``routes``:
        how many of ours to remove and the plain Forward (the next Route's pool target,
        else the proxy pool by Call-ID, ``under_way`` as in ``toward_proxies``). None when
        ``route`` would decide otherwise: the top Route not ours, a flow token refused
        (403), no proxy (503). A Route whose URI the parser refuses raises its ParseError.
        The LB's fast path asks this instead of ``route``."""
        if not routes:
            return None
        top = routes[0]
        top_read = self._read_route(top)
        if not top_read[0].ours:
            return None
        popped, token, after = self._count_ours(routes, top.uri_text, top_read)
        if token is not None and self.tokens.decode(token, call_id, tags) is None:
            return None
        destination = None if after is None else self._route_target(after)
        if destination is None:
            return self._proxy_forward(popped, call_id, under_way)
        return popped, self._plain(destination)

    def _proxy_forward(
        self, popped: int, call_id: str, under_way: bool
    ) -> tuple[int, Forward] | None:
        forward = self.toward_proxies(call_id, under_way)
        return None if forward is None else (popped, forward)

    # -- pieces ------------------------------------------------------------------------------
    def _our_routes(self, request: Request) -> tuple[int, str | None, RouteUri | None]:
        """How many Routes on top are ours, the flow token in them, and the Route after
        them as read (None: none, or not read here)."""
        top = request.top_route
        if top is None:
            return 0, None, None
        top_read = self._read_route(top)
        if not top_read[0].ours:
            return 0, None, None
        return self._count_ours(request.routes, top.uri_text, top_read)

    def _count_ours(
        self, routes: list[Address], top_text: str, top_read: tuple[RouteUri, str | None]
    ) -> tuple[int, str | None, RouteUri | None]:
        """``_our_routes`` over ``routes``; the top Route's URI ``top_text`` (ours) was
        read already as ``top_read``."""
        count, token = 0, None
        for route in routes:
            if count == 0 and route.uri_text == top_text:
                uri, user = top_read  # the top Route again, read alone above
            else:
                uri, user = self._read_route(route)
            if not uri.ours:
                return count, token, uri
            count += 1
            if token is None and user:
                token = user
        return count, token, None

    def _read_route(self, route: Address) -> tuple[RouteUri, str | None]:
        """What a Route's URI says, and its user part: ``route.uri`` read as the parser
        reads it (a bad URI raises its ParseError), memoised by the URI's text.

        The text of our own Route differs in each dialog only by its flow token (the user
        part), a proxy's only by its dialog token: these are cut out of the key
        (``_route_uri_key``), and the user part taken from the text. What is memoised is
        what the text alone says (the Sides do not change), so one packet's Route cannot
        change what another's is read as; the memo is bounded."""
        key, token = _route_uri_key(route.uri_text)
        if not key:
            return self._parse_route_uri(route, True)
        known = self._route_uris.table.get(key)
        if known is None:
            known = self._route_uris.put(key, self._parse_route_uri(route, token is None))
        return known if token is None else (known[0], token)

    def _parse_route_uri(self, route: Address, with_user: bool) -> tuple[RouteUri, str | None]:
        """The URI read, and its user part when ``with_user`` (else None: it is no part of
        the memo key, and is taken from each text)."""
        uri = route.uri
        if not isinstance(uri, SipUri):
            return NOT_A_SIP_URI, None
        read = RouteUri(True, self.sides.is_ours(uri), uri.host_bare, uri.port or 5060)
        return read, (uri.user if with_user else None)

    def _for_us(self, request: Request) -> bool:
        if "@" in request.uri_text:  # a user part: for someone else (parsing costs more)
            return False
        uri = request.uri
        return isinstance(uri, SipUri) and not uri.user and self.sides.is_ours(uri)

    def _client_flow(self, request: Request, peer: Peer, outbound: bool = False) -> Flow:
        if peer.transport != "udp" and peer.connection_id is not None:
            worker = peer.connection_id >> CONNECTION_BITS
            connection = peer.connection_id & ((1 << CONNECTION_BITS) - 1)
            # Reached over this connection while it lasts; after it, at its Contact unless
            # it must be reached by the flow (outbound, NAT: a TCP client's source port
            # never matches its Via, so only the address and the Contact tell).
            evidence = nat_evidence(request, peer.host, peer.port)
            by_flow = outbound or evidence.via_address_differs or evidence.private_contact
            # A WebSocket client (a browser) cannot be reached any other way: its Contact
            # names a made-up ".invalid" host (RFC 7118 §5.2)
            by_flow = by_flow or peer.transport == "ws" or peer.transport == "wss"
            return Flow(
                peer.transport, peer.host, peer.port, connection, worker, by_flow, self.lb_id
            )
        nat = outbound or nat_evidence(request, peer.host, peer.port).behind_nat
        return self._udp_flow(peer.host, peer.port, nat)

    def _udp_flow(self, host: str, port: int, reach_by_flow: bool) -> Flow:
        """The UDP flow of a client at ``host``:``port``, memoised: a Flow is frozen and
        depends on nothing else (the LB's id and a keeper derived from the address), and
        making one costs more than the rest of the lookup."""
        key = (host, port, reach_by_flow)
        flow = self._udp_flows.table.get(key)
        if flow is None:
            keeper = udp_keeper(host, port)
            flow = Flow("udp", host, port, 0, keeper, reach_by_flow, self.lb_id)
            self._udp_flows.put(key, flow)
        return flow

    def _route_uri(
        self, side: SideName, token: str, transport: TransportName, host: str, sips: bool = False
    ) -> str:
        return self.sides.route_uri(side, token, transport, host, sips=sips)

    @staticmethod
    def _creates_dialog(request: Request) -> bool:
        return request.method in DIALOG_CREATING and request.to.tag is None

    def _under_way(self, request: Request) -> bool:
        """Part of a transaction or dialog already placed: draining targets keep it."""
        if request.method in ("CANCEL", "ACK"):
            return True
        return self.pools.has_draining and request.to.tag is not None


def _route_uri_key(text: str) -> tuple[str, str | None]:
    """The memo key of a sip/sips URI text, and the user part cut out of it ("": not to
    be memoised). Two parts that change from one dialog to the next are cut out, when
    written in base64url characters (no escape, '=', ';', '?', '@' or anything the URI
    parser refuses or reads otherwise):

    - the user part (our flow token): ``sip:USER@rest``; the first '@' ends it, so the
      rest parses as it would after any other such user part;
    - the value of a last parameter ``;dt=`` (a proxy's dialog token), in a URI without
      headers ('?'): any such value parses alike, and only the URI's scheme, host and
      port are read from it here.

    A key with a cut is CUT, what was cut ("u", "d" or both) and the text left: no two
    kinds of text share a key, and no URI text is itself one (those starting so are not
    memoised)."""
    if text[:1] == CUT:
        return "", None
    colon = text.find(":")
    scheme = text[:colon].lower() if colon > 0 else ""
    if scheme != "sip" and scheme != "sips":
        return text, None
    kind, left, user = "", text, None
    at = text.find("@")
    if at > colon + 1 and _base64url(text[colon + 1 : at]):
        kind, left, user = "u", text[: colon + 1] + text[at + 1 :], text[colon + 1 : at]
    dialog = left.rfind(DIALOG_TOKEN)
    if dialog > colon and "?" not in left and _base64url(left[dialog + len(DIALOG_TOKEN) :]):
        kind, left = kind + "d", left[: dialog + len(DIALOG_TOKEN)]
    return (CUT + kind + left if kind else text), user


def _base64url(text: str) -> bool:
    """Not empty, and only letters and digits (ASCII), '-' and '_'."""
    return text != "" and (alnum_besides(text, "-", "_") or not text.strip("-_"))


def _record_routes(inbound: str, outbound: str) -> tuple[str, ...]:
    """Both entries when the request changes side or transport at the LB (RFC 3261 §16.6
    step 4: each party reaches the LB where and how it can); else one."""
    return (inbound,) if inbound == outbound else (inbound, outbound)


def _is_sips(request: Request) -> bool:
    """A request for a sips: URI: its Record-Route toward the client is sips too."""
    return request.uri_text[:5].lower() == "sips:"


def _uses_outbound(request: Request) -> bool:
    """RFC 5626: a REGISTER whose Contact has reg-id and +sip.instance, or a request
    whose Contact URI carries ``ob`` (§5.4)."""
    for contact in request.contacts:
        if "reg-id" in contact.params and "+sip.instance" in contact.params:
            return True
        if isinstance(contact.uri, SipUri) and "ob" in contact.uri.params:
            return True
    return False


def _contact_digests(request: Request) -> str:
    """The digests of the first MAX_LEARNED_CONTACTS Contacts (none for ``*``): what a
    REGISTER's 2xx is matched with (``keepalive.learned``)."""
    contacts = request.contacts[:MAX_LEARNED_CONTACTS]  # [] for '*'
    return ".".join(contact_digest(c.uri_text) for c in contacts)


def udp_keeper(host: str, port: int) -> int:
    """The worker field of a UDP flow's token: derived from the client's address, not from
    the worker that happened to receive the request. Datagrams are spread over workers, so
    a refresh or an un-REGISTER may arrive anywhere; the same address must give the same
    token, or one flow would be kept (and pinged) twice and never ended."""
    digest = hashlib.blake2b(f"{host}\x00{port}".encode(), digest_size=2).digest()
    return digest[0]
