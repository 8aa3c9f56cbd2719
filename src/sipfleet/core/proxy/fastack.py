"""The proxy's fast path: the usual UDP ACK of a 2xx sent on from the datagram's bytes,
without a ``Message`` (docs/proxy.md, "The ACK of a 2xx from its bytes").

The ACK of a 2xx belongs to no transaction: ``ProxyCore._forward_ack`` takes our Route
off, checks its dialog token, finds the next hop and the engine forwards it statelessly
(``StatelessForwarder.forward_request``: the top Via stamped, ours pushed, Max-Forwards
decremented). Parsed into a ``Message``, validated and serialised again, that is most of
the proxy's instructions for the ACK. Here the head is split into lines once and read
with the LB fast path's readers (``sip/headlines.py``); the same edits are spliced into
the lines.

Sans-IO, as the core: ``FastAcks.take`` says what to send where, or None; the engine's
``relay`` sends it and counts it as the present path counts it. What is taken:

- ``ACK <URI> SIP/2.0``, every header name one the parser knows, one Content-Length
  matching the body, no byte the parser rejects, no folded line among those read;
- our Route on top, each Route written ``<URI>`` (comma-separated on one line, as sipp
  writes them, or one per line), with a ``dt`` token that verifies for the Call-ID and the
  tags (``DialogTokens.dialog_caller``), no media relay (``mr``) and nothing the hooks
  act on (``MessageHooks.leaves_ack``: privacy's ``pv``);
- the next hop (the next Route, loose, else the Request-URI, which must not name us nor
  carry ``maddr``) a literal IPv4 address over UDP;
- From and To with a plain tag, a plain Call-ID, ``CSeq: N ACK``, no Expires, Max-Forwards
  above 1, a top Via alone on its line with an RFC 3261 branch that ``carried_branch``
  carries and that no server transaction has (else it is the ACK of our non-2xx).

Everything else is declined and goes the present way: forged or foreign tokens (dropped
and counted there), strict routers, host names, IPv6, TCP.
"""

from __future__ import annotations

from typing import Final

from sipfleet.core.proxy.addresses import OwnAddresses
from sipfleet.core.proxy.core import ProxyCore
from sipfleet.core.proxy.media import relay_of
from sipfleet.core.proxy.resolve import ResolveError, literal_destination
from sipfleet.core.stateless import StatelessForwarder
from sipfleet.sip.address import Address, parse_address, parse_trimmed_address
from sipfleet.sip.builders import carried_branch
from sipfleet.sip.dialog_token import PARAM as TOKEN_PARAM
from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import WS
from sipfleet.sip.headlines import (
    HeadLines,
    call_id_of,
    clean,
    hop_count,
    joined,
    pop_routes,
    push_our_via,
    route_values,
    tag_of,
    top_via_text,
)
from sipfleet.sip.memo import Memo
from sipfleet.sip.message import MAX_CSEQ
from sipfleet.sip.uri import SipUri, Uri, parse_uri
from sipfleet.sip.via import BRANCH_COOKIE, parse_via
from sipfleet.transport.base import Destination, Peer, TransportError

ACK_START: Final = b"ACK "
SIP_VERSION: Final = "SIP/2.0"
TOKEN_MARK: Final = f";{TOKEN_PARAM}="
CUT: Final = "\x00"
MAX_CSEQ_DIGITS: Final = 10
MAX_URIS: Final = 4096
Hop = tuple[bool, Destination | None]  # a Request-URI: taken at all, and its destination


class FastAcks:
    def __init__(self, core: ProxyCore, forwarder: StatelessForwarder, max_size: int) -> None:
        """``core``: whose own addresses, dialog tokens, hooks and transactions decide;
        ``forwarder``: the engine's, which writes our Via; ``max_size``: the parser's."""
        self.core = core
        self.forwarder = forwarder
        self.max_size = max_size
        self.taken = 0
        # By URI text (ours: with its dt value cut out). They depend on the core's own
        # addresses besides: emptied when those change (``_own``).
        self._own: OwnAddresses = core.own
        self._ours: Final = Memo[str, bool](MAX_URIS)  # see _our_token
        self._request_uris: Final = Memo[str, Hop](MAX_URIS)  # see _request_uri
        self._hops: Final = Memo[str, Destination | None](MAX_URIS)  # see _route_hop

    def take(self, data: bytes, peer: Peer) -> tuple[bytes, Destination] | None:
        """The ACK ``data`` (a UDP datagram from ``peer``) as the present path would
        forward it, and where to; None when declined (nothing changed or counted)."""
        if not data.startswith(ACK_START) or len(data) > self.max_size or ":" in peer.host:
            return None
        text = data.decode("latin-1")  # one character per byte: offsets are the same
        head_end = text.find("\r\n\r\n")
        if head_end < 0:
            return None
        lines = text[:head_end].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION or not parts[1] or len(lines) < 2:
            return None
        if not clean(lines):
            return None
        seen = HeadLines(lines, len(data) - head_end - 4, 1, True)
        if not seen.usual or seen.expires or seen.cseq <= 0 or not _cseq_ack(lines[seen.cseq]):
            return None
        hops = hop_count(lines[seen.max_forwards])
        routes = route_values(lines, seen.routes)
        if hops <= 1 or routes is None:
            return None  # Max-Forwards 0 (dropped there), 1 (sent on with 0) or a bad one
        destination = self._next_hop(parts[1], routes, lines, seen)
        if destination is None:
            return None
        client = self._client_via(lines, seen, peer, destination)
        if client is None:
            return None
        ours, stamped = client
        # -- what the present path does: our Route popped, our Via pushed, a hop less ------
        push_our_via(lines, seen, ours, stamped, hops)
        pop_routes(lines, seen.routes, 1)  # last: it may delete a line
        self.taken += 1
        return joined(lines, data, head_end), destination

    def _next_hop(
        self, uri_text: str, routes: list[Address], lines: list[str], seen: HeadLines
    ) -> Destination | None:
        """Where ``_forward_ack`` sends the ACK once our Route (``routes[0]``) is off,
        when its token verifies for the dialog the request names; else None."""
        if self.core.own is not self._own:  # a new listener or pool: read afresh
            self._own = self.core.own
            self._ours.table.clear()
            self._request_uris.table.clear()
        taken, request_hop = self._request_uri(uri_text)
        token = self._our_token(routes[0])
        if not taken or not token:
            return None
        call_id = call_id_of(lines[seen.call_id])
        from_tag = tag_of(lines[seen.from_], "From")
        to_tag = tag_of(lines[seen.to], "To")
        if not (call_id and from_tag and to_tag):
            return None
        if self.core.dialog_tokens.dialog_caller(token, call_id, from_tag, to_tag) is None:
            return None  # dropped and counted by the present path
        return self._route_hop(routes[1]) if len(routes) > 1 else request_hop

    def _request_uri(self, uri_text: str) -> Hop:
        """Whether the Request-URI is one validate_request takes and take_our_route
        leaves as it is (not ours, no ``maddr``), and its UDP IPv4 destination (None:
        not one). Memoised by the text: an ACK's is its dialog's remote target."""
        known = self._request_uris.table.get(uri_text)
        if known is None:
            known = self._request_uris.put(uri_text, self._read_request_uri(uri_text))
        return known

    def _read_request_uri(self, uri_text: str) -> Hop:
        try:
            uri = parse_uri(uri_text, allow_other_schemes=False)
        except ParseError:
            return False, None
        if not isinstance(uri, SipUri) or uri.headers or "maddr" in uri.params:
            return False, None
        if uri.user is None and self.core.own.names(uri):
            return False, None  # a strict router's: the present path restores the real one
        return True, _udp_destination(uri)

    def _our_token(self, route: Address) -> str:
        """The ``dt`` value of the top Route when that is ours, as take_our_route reads
        and pops it, with no relay and nothing the hooks act on; else "".

        Memoised by the URI with its token value cut out (each dialog has its own): what
        the parsers make of the rest does not depend on a value of plain characters."""
        uri_text = route.uri_text
        at = uri_text.find(TOKEN_MARK)
        if at < 0 or uri_text.lower().count(TOKEN_MARK) != 1:
            return ""
        start = at + len(TOKEN_MARK)
        end = uri_text.find(";", start)
        if end < 0:
            end = len(uri_text)
        token = uri_text[start:end]
        bare = token.replace("-", "").replace("_", "")  # base64url
        if not (bare.isalnum() and bare.isascii()):
            return ""
        key = uri_text[:start] + CUT + uri_text[end:]
        known = self._ours.table.get(key)
        if known is None:
            known = self._ours.put(key, self._read_our_route(route.raw, token))
        return token if known else ""

    def _read_our_route(self, value: str, token: str) -> bool:
        try:
            uri = parse_trimmed_address(value, "Route").uri  # Message.top_route
            parse_address(value, "Route")  # Message.pop_route reads it again
        except ParseError:
            return False
        if not isinstance(uri, SipUri) or not self.core.own.names(uri):
            return False
        if uri.params.get(TOKEN_PARAM) != token:
            return False
        return relay_of(uri) is None and self.core.hooks.leaves_ack(uri)

    def _route_hop(self, route: Address) -> Destination | None:
        """The UDP IPv4 destination of the Route after ours, a loose router's (a strict
        one's is declined: the present path rewrites the Request-URI); else None.
        Memoised by the Route's text."""
        value = route.raw
        table = self._hops.table
        if value in table:
            return table[value]
        return self._hops.put(value, self._read_route_hop(value))

    @staticmethod
    def _read_route_hop(value: str) -> Destination | None:
        try:
            uri = parse_trimmed_address(value, "Route").uri
        except ParseError:
            return None
        if isinstance(uri, SipUri) and not uri.is_loose_router:
            return None
        return _udp_destination(uri)

    def _client_via(
        self, lines: list[str], seen: HeadLines, peer: Peer, destination: Destination
    ) -> tuple[str, str | None] | None:
        """Our Via toward ``destination`` and the client's top Via as forward_request
        writes it (None: as it is), when the top Via is one validate_request reads, with
        an RFC 3261 branch no server transaction matches and ``carried_branch`` carries;
        else None."""
        top = top_via_text(lines, seen)
        if not top:
            return None
        forwarder = self.forwarder
        try:
            via = parse_via(top)
            salt, prefix = forwarder.via_prefix(destination, None)
        except (ParseError, TransportError):
            return None
        branch = via.branch
        if branch is None or not branch.startswith(BRANCH_COOKIE):
            return None
        if self.core.layer.serves((branch, via.host.lower(), via.port, "INVITE")):
            return None  # the ACK of our non-2xx: its transaction's
        carried = carried_branch(via, salt)
        if carried is None:
            return None
        return forwarder.our_via(prefix, peer, carried), forwarder.stamped(via, peer)


def _udp_destination(uri: Uri) -> Destination | None:
    """``literal_destination`` of ``uri`` when that is UDP to an IPv4 address."""
    try:
        destination = literal_destination(uri)
    except ResolveError:
        return None
    if destination is None or destination.transport != "udp" or ":" in destination.host:
        return None
    return destination


def _cseq_ack(line: str) -> bool:
    """``CSeq: N ACK`` as Message.cseq reads it plainly, in range; odd spacing: False."""
    digits, _, method = line[line.find(":") + 1 :].strip(WS).partition(" ")
    if method != "ACK" or not (digits.isdigit() and digits.isascii()):
        return False
    return len(digits) <= MAX_CSEQ_DIGITS and int(digits) <= MAX_CSEQ
