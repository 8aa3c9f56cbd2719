"""Stateless forwarding (RFC 3261 §16.11, RFC 3581): the primitive, without policy.

Which target a request goes to is the caller's choice (the LB's policy); this module
does what every stateless hop must do on the way:

request:  Max-Forwards 0 -> 483 (§16.3 step 3), else decrement (§16.6 step 3); stamp the
          top Via with ``received`` / ``rport`` (§18.2.1, RFC 3581 §4); push our own Via
          with a branch that is the same for every retransmission (§16.11); send; one
          that no longer fits in a datagram (EMSGSIZE) -> 513 (§18.1.1, §21.5.11).
response: the top Via must be ours, else drop (§16.11, §18.2.1 "discard"); pop it; send
          to the next Via per §18.2.2 and RFC 3581: over the connection the request came
          on while it is open (TCP), else to ``received``/``rport`` or the sent-by.

No state is kept between a request and its responses: what the response path needs
(which TCP connection, which UDP socket the request came in on) rides in our Via as the
``sfi`` parameter and comes back in the response.

    forwarder = StatelessForwarder(endpoint)
    forwarder.forward_request(request, peer, Destination("udp", "10.0.0.7", 5060))
    forwarder.forward_response(response, peer)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

from sipfleet.core.endpoint import SipEndpoint
from sipfleet.sip import ParseError, Request, Response, Via, parse_via
from sipfleet.sip.builders import make_response, stateless_branch
from sipfleet.sip.grammar import format_params
from sipfleet.sip.memo import Memo
from sipfleet.sip.via import BRANCH_PARAM
from sipfleet.transport.base import (
    Destination,
    MessageTooLarge,
    Peer,
    TransportError,
    TransportName,
)
from sipfleet.transport.sockets import is_ip, normalise_host

log: Final = logging.getLogger(__name__)

FLOW_PARAM: Final = "sfi"  # in our Via: "t<connection id>" or "u<udp socket index>"
FLOW_MARK: Final = f";{FLOW_PARAM}="
_new_tuple: Final = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path
DEFAULT_PORT: Final = 5060
DEFAULT_TLS_PORT: Final = 5061  # RFC 3261 §19.1.2, sips:
# Via transports served over a connection, and the transport's name here
_STREAMS: Final[dict[str, TransportName]] = {
    "TCP": "tcp",
    "TLS": "tls",
    "WS": "ws",
    "WSS": "wss",
}
MAX_TARGETS: Final = 4096


@dataclass(slots=True)
class ForwardStats:
    requests_forwarded: int = 0
    responses_forwarded: int = 0
    too_many_hops: int = 0  # 483 answered
    too_large: int = 0  # too large for a datagram once forwarded: 513 answered
    requests_rejected: int = 0  # bad Via / Max-Forwards: 400 answered
    responses_not_ours: int = 0  # top Via not ours: dropped
    responses_unroutable: int = 0  # no usable next Via: dropped
    send_errors: int = 0


class StatelessForwarder:
    def __init__(
        self,
        endpoint: SipEndpoint,
        *,
        force_rport: bool = False,
        advertised: Sequence[tuple[str, int]] = (),
    ) -> None:
        """``force_rport``: send responses to the source port even when the client did
        not ask with ``rport`` (symmetric routing for clients behind NAT that lack it);
        ``advertised``: (host, port) our Vias also name (a public address behind 1:1 NAT)."""
        self.endpoint = endpoint
        self.force_rport = force_rport
        self.advertised = tuple(advertised)
        self.stats = ForwardStats()
        self._sent_bys: set[tuple[str, int | None]] | None = None
        self._our_texts: set[str] = set()  # "SIP/2.0/UDP host:port" of each sent-by
        # our UDP sockets' (host, port) -> ";sfi=u<index>", what our Via ends with
        self._udp_flows: dict[tuple[str, int], str] | None = None
        self._udp_tails: dict[str, str] | None = None  # ";sfi=u<index>" -> "u<index>"
        # target (and sent-by) -> branch salt, our Via up to the branch value. Bounded
        # (sip/memo.py): targets may come from requests.
        self._targets: Final = Memo[object, tuple[str, str]](MAX_TARGETS)
        self._one_udp_socket = False  # known once the first UDP request passed

    # -- requests --------------------------------------------------------------------------
    def forward_request(
        self,
        request: Request,
        peer: Peer,
        target: Destination,
        *,
        sent_by: str | None = None,
        via_params: str = "",
    ) -> bool:
        """Forward ``request`` to ``target``. Returns False when it was answered (483,
        400, 513) or could not be sent; the request has then been edited and must not be
        forwarded again (pass a ``copy()`` when a second target may be tried).

        ``sent_by``: the ``host:port`` our Via names, when it is not the first listener of
        the transport (a node with a public and an internal side names the side the
        request leaves from). ``via_params``: extra parameters for our Via (``;name=value``),
        which the response brings back."""
        known = self._targets.table.get(target) if sent_by is None else None
        salt, prefix = known or self.via_prefix(target, sent_by)
        try:
            max_forwards = request.max_forwards
            via = request.top_via
            branch = stateless_branch(request, salt)
        except ParseError as bad:
            self.stats.requests_rejected += 1
            if request.method != "ACK":
                self.endpoint.reply(request, bad.status, bad.reason, peer)
            return False
        if max_forwards == 0:
            self.stats.too_many_hops += 1
            if request.method != "ACK":
                self._answer(request, via, peer, 483)
            return False
        if via.host != peer.host or self.force_rport or "rport" in via.params:
            self._stamp(request, via, peer)  # (not called for the usual client: one call less)
        request.decrement_max_forwards()
        request.push_via(self.our_via(prefix, peer, branch) + via_params)
        # The two exceptions have names of their own: compiled, a name keeps the type of
        # its first binding, and a TransportError bound to a ParseError's name is a TypeError.
        try:
            self.endpoint.send_bytes(request.serialize(), target)
        except TransportError as failed:
            self.stats.send_errors += 1
            log.debug("forward of %r to %s failed: %s", request, target, failed)
            if isinstance(failed, MessageTooLarge):
                self.answer_too_large(request, via, peer)
            return False
        self.stats.requests_forwarded += 1
        return True

    def answer_too_large(self, request: Request, via: Via, peer: Peer) -> None:
        """A request that grew past what one datagram holds (our Via, the caller's
        Record-Route): 513, from us (RFC 3261 §18.1.1 would switch to TCP, which needs
        the transaction a stateless hop does not keep)."""
        self.stats.too_large += 1
        if request.method == "ACK":
            return
        request.pop_first_value("via")  # ours: the answer goes to the Via before it
        self._answer(request, via, peer, 513)

    def via_prefix(self, target: Destination, sent_by: str | None) -> tuple[str, str]:
        """The branch salt (what separates the branches of one request forwarded to
        different targets) and our Via up to its branch value, for ``target``. Kept per
        target: one dict lookup costs less than formatting them again."""
        key = target if sent_by is None else (target, sent_by)
        known = self._targets.table.get(key)
        if known is None:
            if sent_by is None:
                sent_by = self.endpoint.sent_by(target.transport, target.host)
            salt = f"{target.transport}:{target.host}:{target.port}"
            prefix = f"SIP/2.0/{target.transport.upper()} {sent_by};branch="
            known = self._targets.put(key, (salt, prefix))
        return known

    def _stamp(self, request: Request, via: Via, peer: Peer) -> None:
        stamped = self.stamped(via, peer)
        if stamped is not None:
            request.replace_top_via(stamped)

    def stamped(self, via: Via, peer: Peer) -> str | None:
        """The client's top Via ``via`` as it is forwarded: with ``received`` when the
        source IP is not the sent-by host, and always together with the source port when
        ``rport`` is asked (RFC 3581 §4 / RFC 3261 §18.2.1); None: left as it is."""
        if not (via.host != peer.host or self.force_rport or "rport" in via.params):
            return None  # the usual client: no dict built
        wants_rport = ("rport" in via.params or self.force_rport) and via.rport is None
        if not wants_rport and _same_host(via.host, peer.host):
            return None
        params = dict(via.params)
        if wants_rport:
            params["rport"] = str(peer.port)
        params["received"] = peer.host
        # The text str(via.replace(params=params)) would give, without a second Via.
        port = "" if via.port is None else f":{via.port}"
        return f"{via.protocol}/{via.transport} {via.host}{port}{format_params(params)}"

    def our_via(self, prefix: str, peer: Peer, branch: str) -> str:
        """Our Via for a request from ``peer``: ``prefix`` (``via_prefix``) and ``branch``,
        and the ``sfi`` the response path needs."""
        if peer.transport == "udp":
            if self._one_udp_socket:
                return prefix + branch  # nothing to choose on the way back
            flows = self._udp_flows if self._udp_flows is not None else self._udp_flows_known()
            # the parameter written once per socket, not formatted per request
            written = flows.get((peer.local_host, peer.local_port))
            return prefix + branch if written is None else f"{prefix}{branch}{written}"
        flow = self._flow_of(peer)
        return f"{prefix}{branch}" if flow is None else f"{prefix}{branch};{FLOW_PARAM}={flow}"

    def _udp_flows_known(self) -> dict[tuple[str, int], str]:
        """``;sfi=u<index>`` for each of our UDP sockets, by its address; none with one
        socket (nothing to choose)."""
        addresses = self.endpoint.udp.addresses
        self._one_udp_socket = len(addresses) < 2
        flows: dict[tuple[str, int], str] = {}
        if not self._one_udp_socket:
            for index, address in enumerate(addresses):
                flows[address] = f";{FLOW_PARAM}=u{index}"
            if len(flows) < 2:
                flows.clear()  # one address after all: nothing to choose
        self._udp_flows = flows
        return flows

    def _flow_of(self, peer: Peer) -> str | None:
        """What the response path needs to reach the client the way it came."""
        if peer.transport != "udp":  # TCP or TLS: its connection
            return f"t{peer.connection_id}"
        flows = self._udp_flows if self._udp_flows is not None else self._udp_flows_known()
        written = flows.get((peer.local_host, peer.local_port))
        return None if written is None else written[len(FLOW_PARAM) + 2 :]

    def _answer(self, request: Request, via: Via, peer: Peer, status: int) -> None:
        """Our own answer goes where §18.2.2 sends responses: the source IP, and the
        source port only when rport was asked (or forced)."""
        destination = peer.reply_to
        if peer.transport == "udp" and not (via.has_rport or self.force_rport):
            destination = destination._replace(port=via.port or DEFAULT_PORT)
        try:
            self.endpoint.send_response(make_response(request, status), destination)
        except TransportError as exc:
            log.debug("%s to %s not sent: %s", status, destination, exc)

    # -- responses ---------------------------------------------------------------------------
    def forward_response(self, response: Response, peer: Peer) -> bool:
        """Send ``response`` on toward the client; False when it was dropped (a response
        whose top Via is not ours keeps it)."""
        try:
            ours = response.pop_first_value("via", self._is_ours)  # the others not split
            if ours is None:
                self.stats.responses_not_ours += 1
                log.debug(
                    "response %r: top Via %s is not ours", response, response.first_value("via")
                )
                return False
            # Only the Via after ours is parsed. A response to our own request has none:
            # "Missing Via header".
            destination = self.next_hop(response.top_via, ours)
        except ParseError as bad:
            destination = None
            log.debug("response %r from %s:%s: %s", response, peer.host, peer.port, bad)
        if destination is None:
            self.stats.responses_unroutable += 1
            return False
        try:
            self.endpoint.send_bytes(response.serialize(), destination)
        except TransportError as failed:
            self.stats.send_errors += 1
            log.debug("response %r to %s not sent: %s", response, destination, failed)
            return False
        self.stats.responses_forwarded += 1
        return True

    def _is_ours(self, via_text: str) -> bool:
        """Whether a Via (text) names one of our sent-bys. Our Via comes back as we wrote
        it, so its text up to the first ';' is looked up first; a Via written another
        way (spacing, case) is parsed and compared."""
        if self.wrote(via_text):
            return True
        via = parse_via(via_text)
        return (via.host, via.port) in self._sent_bys_known()

    def wrote(self, via_text: str) -> bool:
        """Whether a Via (text) names one of our sent-bys as we write it (the LB's fast
        path takes only these)."""
        if self._sent_bys is None:
            self._sent_bys_known()
        return via_text.partition(";")[0] in self._our_texts

    def written_flow(self, ours: str, set_apart: tuple[str, ...] = ()) -> str | None:
        """``flow_of(ours)`` for a Via written as ``our_via`` writes it for UDP: one of
        our sent-bys, ``;branch=``, a branch value without '=' that starts with none of
        ``set_apart``, then nothing or the ``;sfi=`` of one of our UDP sockets: "" or
        "u<n>"; None for anything else (a parameter more, one our caller reads), read
        the long way (``wrote``, ``flow_of``). A slice and a lookup each, where those
        search the text: the LB's fast path asks it for every response."""
        semi = ours.find(";")
        if semi < 0 or ours.find(BRANCH_PARAM, semi, semi + len(BRANCH_PARAM)) != semi:
            return None
        if self._sent_bys is None:
            self._sent_bys_known()
        if ours[:semi] not in self._our_texts:
            return None
        start = semi + len(BRANCH_PARAM)
        end = ours.find(";", start)
        branch = ours[start:end] if end >= 0 else ours[start:]
        if not branch or "=" in branch:
            return None
        for mark in set_apart:
            if branch.startswith(mark):
                return None
        if end < 0:
            return ""
        tails = self._udp_tails if self._udp_tails is not None else self._udp_tails_known()
        return tails.get(ours[end:])

    def _udp_tails_known(self) -> dict[str, str]:
        flows = self._udp_flows if self._udp_flows is not None else self._udp_flows_known()
        self._udp_tails = {written: written[len(FLOW_MARK) :] for written in flows.values()}
        return self._udp_tails

    def _sent_bys_known(self) -> set[tuple[str, int | None]]:
        if self._sent_bys is None:
            self._sent_bys = set()
            self._our_texts = set()
            named = [(a.host, a.port) for a in self.endpoint.addresses]
            for bare, port in [*named, *self.advertised]:
                host = f"[{bare}]" if ":" in bare else bare
                self._sent_bys.add((host, port))
                for transport in ("UDP", "TCP", "TLS", "WS", "WSS"):
                    self._our_texts.add(f"SIP/2.0/{transport} {host}:{port}")
        return self._sent_bys

    def next_hop(self, via: Via, ours: str) -> Destination | None:
        """§18.2.2 / RFC 3581 §4 for the Via after ours; ``ours`` is our Via's text."""
        transport = via.transport
        host, port = via.response_address(DEFAULT_PORT)
        if not is_ip(host):
            return None  # RFC 3263 lookups have no place on this path
        flow = flow_of(ours)
        if transport == "UDP":
            local = None
            if flow[:1] == "u" and flow[1:].isdigit():
                addresses = self.endpoint.udp.addresses
                index = int(flow[1:])
                local = addresses[index] if index < len(addresses) else None
            return _new_tuple(Destination, ("udp", host, port, None, local))
        name = _STREAMS.get(transport)
        if name is not None:
            # a new connection goes to the sent-by port (§18.2.2); TLS and WebSocket only
            # over the connection the request came on (never opened here)
            connection = int(flow[1:]) if flow[:1] == "t" and flow[1:].isdigit() else None
            default_port = DEFAULT_PORT if transport == "TCP" else DEFAULT_TLS_PORT
            return Destination(name, host, via.port or default_port, connection)
        return None  # SCTP: not served here

    def counters(self) -> dict[str, int]:
        return asdict(self.stats)


class StatelessRelay:
    """A SipHandler relaying every request to one target and every response back by its
    Via: the LB's job reduced to one fixed next hop (the relay benchmark's handler).
    Compiled with the forwarder, a message reaches it without a Python-level call."""

    def __init__(self, forwarder: StatelessForwarder, target: Destination) -> None:
        self.forwarder = forwarder
        self.target = target

    def on_request(self, request: Request, peer: Peer) -> None:
        self.forwarder.forward_request(request, peer, self.target)

    def on_response(self, response: Response, peer: Peer) -> None:
        self.forwarder.forward_response(response, peer)


def flow_of(ours: str) -> str:
    """The ``sfi`` of our Via (its text ``ours``): "" when it has none. ``next_hop``
    reads nothing else of it."""
    return _flow_param(ours) if FLOW_MARK in ours else ""


def _flow_param(via_text: str) -> str:
    """The ``sfi`` value of our Via. We wrote it once, as ``u<n>`` or ``t<n>``: found in
    the text when it reads so (parsing the Via costs ten times as much), else parsed."""
    at = via_text.find(FLOW_MARK) + len(FLOW_MARK)
    value = via_text[at:].partition(";")[0]
    if value[1:].isdigit() and value[:1] in "ut" and via_text.find(FLOW_MARK, at) == -1:
        return value
    return parse_via(via_text).params.get(FLOW_PARAM) or ""


def _same_host(via_host: str, source: str) -> bool:
    return via_host == source or (via_host[:1] == "[" and normalise_host(via_host) == source)
