"""The LB's fast path: the usual UDP response and plain request relayed from the
datagram's bytes, without a ``Message`` (docs/lb.md, "The fast path"; docs/benchmarks.md,
"The LB's CPU per pair").

The present path parses every datagram into a ``Message`` (a list of line strings and
one of keys), edits it and serialises the lines again: about half of the LB's
instructions per message. Here the head is split into lines once, every header name is
read as the parser reads it (the names phones usually write in place, the rest in the
parser's own memo: a name the parser has not met is left to it), the
few lines the hop reads are checked as the parser and the accessors check them, and the
edits are spliced into the lines.

What is taken here is exactly what the present path would send, to the same place,
counted the same way; everything else is declined (``relay`` returns False, having
counted and changed nothing) and goes the present way.

- Responses: ``SIP/2.0 NNN reason`` whose first header line is our Via (alone, or first
  on a comma-separated line, as sipp writes them), written as we write it and not
  answering one of the Balancer's probes, the next Via right after it, to be sent over
  UDP to an IPv4 address: our Via cut out. A registrar's overload control in our Via
  (RFC 7339: under overload, in every answer) is read as the Balancer reads it
  (``heard_loss``); a final answer carrying the edge guard's lockout mark, or a 2xx
  carrying a REGISTER's flow, is handed to the Balancer's reading once relayed
  (``answered``: how the credentials fared, the registration that keeps the flow).
- Requests the Router forwards plainly to the proxy pool (no Route, not REGISTER,
  creating no dialog, not for the LB itself), without credentials, while no target
  drains: screened by the edge guard, the top Via stamped, our Via pushed with the
  stateless branch, Max-Forwards decremented.
- In-dialog requests from a client (not from the cluster, a To tag, not REGISTER) whose
  top Route(s) are ours, each Route written ``<URI>`` (on one line, comma-separated, as
  sipp writes them, or one per line), From and To with a plain tag: the same, where
  ``Router.toward_cluster_routed`` sends them (the token checked, the next Route's pool
  target or the proxy pool), our Route(s) cut as ``Message.pop_first_value`` cuts them.
- INVITE, SUBSCRIBE and REFER with no Route nor Record-Route and no To tag, their
  From tag plain: the same, where ``Router.toward_cluster_created`` sends them (as
  ``Router.route`` would, from the Call-ID, the From tag, the top Via's address and
  what the Contact lines say), with the Record-Route(s) it adds.
- REGISTER with no Route, Path nor To tag, with or without credentials: to the
  registrar pool with the Path and our Via's flow parameters
  ``Router.toward_registrar_registered`` gives, the edge guard's lockout mark and
  ``oc``; or, without credentials and drawn for its registrar's overload control
  (RFC 7339), the Balancer's 503.
- While the LB is overloaded (``OverloadMonitor``, the refuse-everything mark), each of
  these that is new (no To tag, not ACK nor CANCEL, from a client) is refused as
  Balancer._shed refuses it: a 503 while the answer budget lasts, else dropped; the
  rest are relayed as above and earn the budget. A refusal from the bytes costs less
  than a relay; on the parsed path it had cost more.

Both need one Content-Length matching the body, no byte the parser would reject (NUL,
a CR or LF alone), no folded line among those read; compact ``v:``, quotes, IPv6 and
TCP/TLS/WS are declined. The head's lines are read and edited with ``sip/headlines.py``
(shared with the proxy's fast path for the ACK of a 2xx).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Final

from sipfleet.core.endpoint import SipEndpoint, count_request
from sipfleet.core.lb.edge import EdgeGuard, auth_mark
from sipfleet.core.lb.router import DIALOG_CREATING, RETRY_AFTER, Forward, Router
from sipfleet.core.overload import (
    LOSS_ALGORITHM,
    OC_SUPPORTED,
    OC_VALUE,
    LossFeedback,
    OverloadMonitor,
)
from sipfleet.core.stateless import StatelessForwarder, flow_of
from sipfleet.sip.builders import COPIED_IN_RESPONSES, MAX_CARRIED_BRANCH, carried_branch
from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import WS, match_plain_params
from sipfleet.sip.headers import HEADER_KEYS
from sipfleet.sip.headlines import (
    VIA_LINE,
    HeadLines,
    alnum_dash_dot,
    call_id_of,
    clean,
    head_end_of,
    hop_count,
    joined,
    name_key,
    pop_routes,
    push_our_via,
    route_values,
    tag_of,
    top_via_text,
    untagged,
)
from sipfleet.sip.memo import Memo
from sipfleet.sip.message import SIP_VERSION as VERSION
from sipfleet.sip.message import Request, Response, header_line, header_value
from sipfleet.sip.parser import parse_message
from sipfleet.sip.via import BRANCH_COOKIE, BRANCH_PARAM, parse_via
from sipfleet.transport.base import Destination, MessageTooLarge, Peer, TransportError

RESPONSE_START: Final = "SIP/2.0 "
MIN_RESPONSE: Final = 12  # "SIP/2.0 200 "
SLASH: Final = 47
LETTER_S: Final = 83
VIA_BYTES: Final = b"Via: "
OC_LOSS_ALGORITHM: Final = f";oc-algo={LOSS_ALGORITHM}"  # as LossControl writes it
ROUTE_LINE: Final = "\r\nRoute:"
REST_BLANKS: Final = " \t,"  # what pop_first_value strips before the Via after ours
BRANCH: Final = "branch="
MAX_HOPS: Final = 4096
# What _ours_plain finds in our Via
DECLINED: Final = 0
PLAIN: Final = 1
LEARNING: Final = 2  # the flow mark, in an answer it is not read from (a 401)
MARKED: Final = 3  # marks the Balancer reads (``FastRelay.answered``), in a final answer
_STATUS_CODES: Final = Memo[str, int](1024)  # status line -> its code, 0 when declined
_METHODS: Final = Memo[str, str](4096)  # request line -> its method, "" when declined
SIP_VERSION: Final = "SIP/2.0"
REGISTER_START: Final = "REGISTER "
# Balancer._register's 503 for a registrar that asked (RFC 7339)
REFUSAL_START: Final = "SIP/2.0 503 Overloaded"
REFUSAL_END: Final = f"Retry-After: {RETRY_AFTER}\r\nContent-Length: 0\r\n\r\n"
# What Router._to_cluster forwards plainly when there is no Route (REGISTER gets a Path,
# FastRelay._register; INVITE, SUBSCRIBE and REFER a Record-Route unless they have a To
# tag, FastRelay._created)
PLAIN_METHODS: Final = frozenset(
    {"ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "NOTIFY", "INFO", "UPDATE", "PRACK", "PUBLISH"}
)
# With our Route and a To tag, these create no dialog either (Router._creates_dialog)
ROUTED_METHODS: Final = PLAIN_METHODS | frozenset({"INVITE", "SUBSCRIBE", "REFER"})


class FastRelay:
    def __init__(
        self,
        endpoint: SipEndpoint,
        forwarder: StatelessForwarder,
        marks: tuple[str, ...],
        router: Router | None = None,
        guard: EdgeGuard | None = None,
        overload: OverloadMonitor | None = None,
        loss: LossFeedback | None = None,
        learn_mark: str = "",
        heard_loss: Callable[[str, Peer], None] | None = None,
        answered: Callable[[Response, str, Peer], None] | None = None,
        read_marks: tuple[str, ...] = (),
        shed: Callable[[], bool] | None = None,
        served: Callable[[], None] | None = None,
    ) -> None:
        """``marks``: texts that, in our Via, send a response the present way (the
        Balancer reads them). ``learn_mark``: one of them that only a 2xx is read for
        (the flow token of a REGISTER, learned from its 2xx): any other status carrying
        it comes here, a registrar's 401 above all. ``router``, ``guard``, ``overload``,
        ``loss``: the Balancer's, for requests (without a router, requests all go the
        present way). ``heard_loss``: the Balancer's reading of a registrar's overload
        control (RFC 7339) in our Via and the peer that sent it; without it, an answer
        carrying one goes the present way. ``answered``: the Balancer's reading of a final
        answer whose Via (ours) carries one of ``read_marks`` (the edge guard's lockout
        mark; the flow mark, in a 2xx), given the answer's head and our Via after it is
        relayed; without it, such an answer goes the present way. ``shed`` and ``served``:
        the Balancer's refusal of a new request while it is overloaded (counted; True:
        answer it 503, False: drop it) and the answer budget's earning for one served
        then; without them, requests all go the present way while it is overloaded."""
        self.endpoint = endpoint
        self.forwarder = forwarder
        self.marks = marks
        # The marks a branch value starts with (``branch=...``: the Balancer's probes)
        # and whether every other one starts with ';' (a parameter): then our Via is
        # read without searching it for each (``_written_flow``).
        self._branch_marks = tuple(mark[len(BRANCH) :] for mark in marks if mark.startswith(BRANCH))
        self._marks_apart = all(mark.startswith((BRANCH, ";")) for mark in marks)
        self.learn_mark = learn_mark
        self.heard_loss = heard_loss
        self.answered = answered
        self.read_marks = read_marks if answered is not None else ()
        self._read_next = False  # the answer _destination last placed is to be read
        self.shed = shed
        self.served = served
        self.router = router
        self.guard = guard
        self.overload = overload or OverloadMonitor()
        self.loss = loss if loss is not None else LossFeedback()
        self.requests = 0  # forwarded (or dropped by the edge guard) here
        self.max_size = endpoint.limits.max_message_size
        self.responses = 0  # relayed here (the rest of the counts are the present path's)
        self._hops: Final = Memo[str, Destination](MAX_HOPS)  # see _next_hop
        self._transactions: Final = Memo[str, tuple[str, Destination]](MAX_HOPS)  # _destination
        self._clients: Final = Memo[tuple[str, str, str, int, str], tuple[str, str | None]](
            MAX_HOPS
        )  # see _client_via
        self._via_addresses: Final = Memo[str, tuple[str, int]](MAX_HOPS)  # see _via_address

    def relay(self, data: bytes, peer: Peer) -> bool:
        """True when ``data`` (a UDP datagram from ``peer``) was handled here."""
        if len(data) < MIN_RESPONSE or len(data) > self.max_size:
            return False  # the parser answers 513 or drops it
        # b"SIP/": a response (no method has a '/'); as SipEndpoint.send_bytes tells them
        if data[3] != SLASH or data[0] != LETTER_S:
            return self.router is not None and self._request(data, peer)
        text = data.decode("latin-1")  # one character per byte: offsets are the same
        if text.startswith(RESPONSE_START):
            return self._response(data, text, peer)
        return False

    # -- requests ----------------------------------------------------------------------------
    def _request(self, data: bytes, peer: Peer) -> bool:
        """A request the Router forwards plainly to the proxy pool (no Route, not
        REGISTER, creating no dialog, not for the LB itself), an in-dialog one from a
        client whose top Route(s) are ours (``_routed``) or a dialog-creating one with no
        Route (``_created``), without credentials: forwarded as Balancer._forward and
        StatelessForwarder.forward_request would; while the LB is overloaded, a new one
        (no To tag) refused as Balancer._shed refuses it (``_shed_new``). Everything is
        checked before anything is counted or the edge guard's bucket is
        touched: a decline leaves the present path all of it."""
        text = data.decode("latin-1")
        head_end = head_end_of(text)
        if head_end < 0:
            return False
        # Declined before the head is split: a method none of the three ways takes (a
        # Route is found as we and sipp write it; other spellings: declined by HeadLines)
        start = text[: text.find("\r\n")]
        if start.startswith(REGISTER_START):
            return self._register(data, text, head_end, start, peer)
        method = _method(start)
        routed = text.find(ROUTE_LINE, 0, head_end) >= 0
        creating = not routed and method in DIALOG_CREATING
        if not method or not (routed or creating or _plain_method(method, start)):
            return False
        lines = text[:head_end].split("\r\n")
        overloaded = self.overload.overloaded
        if len(lines) < 2 or not clean(lines) or (overloaded and self.shed is None):
            return False
        # overloaded, a plain request's To is read: a new one (no tag) is refused
        reading_to = overloaded and not routed and method != "ACK" and method != "CANCEL"
        seen = HeadLines(lines, len(data) - head_end - 4, 1, routed, creating or reading_to)
        if not seen.usual:
            return False
        top = top_via_text(lines, seen)
        if not top:
            return False
        popped = 0
        record_routes: tuple[str, ...] = ()
        if routed:
            decided = self._routed(method, lines, seen, peer)
            if decided is None:
                return False
            popped, forward = decided
        elif creating:
            created = self._created(method, start, lines, seen, top, peer)
            if created is None:
                return False
            forward = created
            record_routes = forward.record_routes
        else:
            plain = self._plain_forward(method, lines[seen.call_id])
            if plain is None:
                return False
            forward = plain
        hops = hop_count(lines[seen.max_forwards])
        if hops <= 0:
            return False  # 483 (or a bad value: 400) from the present path
        forwarder = self.forwarder
        salt, prefix = forwarder.via_prefix(forward.destination, forward.sent_by)
        client = self._client_via(top, peer, salt)
        if client is None:
            return False
        branch, stamped = client
        if overloaded:  # as Balancer.on_request: a new request refused, the rest served
            new = reading_to and self._new_request(lines[seen.to], peer)
            if new is None:
                return False
            if new:
                return self._shed_new(method, lines, peer)
            self._served()
        # -- from here on, what the present path would do ---------------------------------
        if self._screened(method, lines, seen, peer, time.monotonic()):
            return True  # over UDP, blocked is dropped: nothing to send
        push_our_via(lines, seen, forwarder.our_via(prefix, peer, branch), stamped, hops)
        if record_routes:
            _add_record_routes(lines, seen.last_via, record_routes)
        if popped:
            pop_routes(lines, seen.routes, popped)  # last: it may delete lines
        forwarded = joined(lines, data, head_end)
        self._send_request(forwarded, forward.destination, top, peer)
        return True

    def _register(self, data: bytes, text: str, head_end: int, start: str, peer: Peer) -> bool:
        """A new REGISTER from a client (no To tag, no Route, no Path; IPv4 UDP), with or
        without credentials, while no target drains: what Balancer._register does with
        it. While the LB is overloaded, one without credentials is refused as
        Balancer._shed refuses it (``_shed_new``). Refused for its registrar (RFC 7339,
        ``LossFeedback.refuses``) when it has no credentials and is drawn: the same 503
        (``_refusal``); else relayed with the Path and our Via's parameters
        ``Router.toward_registrar_registered`` gives, the edge guard's lockout mark
        (``EdgeGuard.credentials_key``; a locked pair is declined: the present path
        strips its credentials) and ``oc``. Everything is checked before anything is
        counted or the edge guard's bucket is touched."""
        router = self.router
        overloaded = self.overload.overloaded
        if router is None or (overloaded and self.shed is None) or ":" in peer.host:
            return False
        if router.pools.has_draining or text.find(ROUTE_LINE, 0, head_end) >= 0:
            return False
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION or not parts[1]:
            return False
        lines = text[:head_end].split("\r\n")
        if len(lines) < 2 or not clean(lines):
            return False
        seen = HeadLines(lines, len(data) - head_end - 4, 1, registering=True)
        if not seen.usual or seen.paths or router.from_cluster(peer):
            return False
        if not untagged(lines[seen.to], "To"):
            return False
        call_id = call_id_of(lines[seen.call_id])
        top = top_via_text(lines, seen)
        hops = hop_count(lines[seen.max_forwards])
        if not call_id or not top or hops <= 0:
            return False
        plain = router.toward_registrar(call_id)
        via = self._via_address(top)
        if plain is None or via is None:
            return False
        try:
            contacts = router.read_contacts([lines[at] for at in seen.contacts])
        except ParseError:
            return False  # a Contact the present path answers 400
        forwarder = self.forwarder
        destination = plain.destination  # the Path adds nothing to where and from where
        salt, prefix = forwarder.via_prefix(destination, plain.sent_by)
        client = self._client_via(top, peer, salt)
        if client is None:
            return False  # a top Via the present path answers 400, or a branch hashed
        now = time.monotonic()
        mark = self._lockout_mark(lines, seen.credentials, peer, now)
        if mark is None:
            return False
        if overloaded:  # as Balancer.on_request: a new exchange refused, the rest served
            if not seen.credentials:
                return self._shed_new("REGISTER", lines, peer)
            self._served()
        if self.loss and not seen.credentials:  # refused before the Path is made
            server = (destination.host, destination.port)
            if self.loss.refuses(server, now, call_id + " " + top):
                return self._refuse_register(lines, seen, peer, now)
        # -- from here on, what the present path would do ---------------------------------
        if self._screened("REGISTER", lines, seen, peer, now):
            return True
        forward = router.toward_registrar_registered(plain, via, contacts, peer)
        branch, stamped = client
        ours = f"{forwarder.our_via(prefix, peer, branch)}{forward.via_params}{mark}{OC_SUPPORTED}"
        push_our_via(lines, seen, ours, stamped, hops)
        assert forward.path is not None
        _add_below_vias(lines, seen.last_via, [header_line("path", forward.path)])
        self._send_request(joined(lines, data, head_end), forward.destination, top, peer)
        return True

    def _new_request(self, to: str, peer: Peer) -> bool | None:
        """Whether a request with no Route whose To line is ``to`` is new, as
        Balancer._sheddable tells (no To tag, from a client; not ACK nor CANCEL, no
        credentials: the caller's); None when only the parser can tell its tag."""
        if not untagged(to, "To"):
            return None if not tag_of(to, "To") else False
        return self.router is None or not self.router.from_cluster(peer)

    def _shed_new(self, method: str, lines: list[str], peer: Peer) -> bool:
        """Balancer._shed of a new request while the LB is overloaded: counted as
        SipEndpoint._deliver counts it, refused as ``shed`` decides, before the edge guard
        (503 from the lines it copies, ``_refusal``, or dropped past the answer budget)."""
        count_request(self.endpoint, method)
        self.requests += 1
        if self.shed is not None and self.shed():
            with contextlib.suppress(TransportError):
                self.endpoint.send_bytes(_refusal(lines), peer.reply_to)
        return True

    def _served(self) -> None:
        if self.served is not None:
            self.served()

    def _lockout_mark(
        self, lines: list[str], credentials: list[int], peer: Peer, now: float
    ) -> str | None:
        """The edge guard's mark for a REGISTER with the ``credentials`` lines ("" for
        none, or no lockouts); None when its pair is locked (declined)."""
        guard = self.guard
        if not credentials or guard is None or guard.lockouts is None:
            return ""
        ordered = [at for at in credentials if name_key(lines[at]) == "authorization"]
        ordered += [at for at in credentials if name_key(lines[at]) != "authorization"]
        key = guard.credentials_key([header_value(lines[at]) for at in ordered], peer)
        if key is None:
            return ""
        return None if guard.lockouts.locked(key, now) else auth_mark(key)

    def _refuse_register(self, lines: list[str], seen: HeadLines, peer: Peer, now: float) -> bool:
        """Balancer._register's 503 for a REGISTER its registrar's overload control
        refuses, built from the lines it copies (``make_response``: Via, From, To,
        Call-ID, CSeq as received), screened and counted as there."""
        if self._screened("REGISTER", lines, seen, peer, now):
            return True
        self.loss.count_refusal()
        with contextlib.suppress(TransportError):  # as Balancer._answer: lost, like a drop
            self.endpoint.send_bytes(_refusal(lines), peer.reply_to)
        return True

    def _routed(
        self, method: str, lines: list[str], seen: HeadLines, peer: Peer
    ) -> tuple[int, Forward] | None:
        """An in-dialog request from a client (a To tag) whose top Route(s) are ours:
        how many Routes to remove and where it goes, as Router.route decides
        (``Router.toward_cluster_routed``), when its Routes, From and To are written
        plainly (``route_values``, ``tag_of``) and no target drains; else None (a token
        refused included: the present path answers 403)."""
        router = self.router
        if router is None or router.pools.has_draining or ":" in peer.host:
            return None
        if router.from_cluster(peer):
            return None  # down a flow: Router._to_client
        to_tag = tag_of(lines[seen.to], "To")
        from_tag = tag_of(lines[seen.from_], "From")
        call_id = call_id_of(lines[seen.call_id])
        if not to_tag or not from_tag or not call_id:
            return None
        routes = route_values(lines, seen.routes)
        if routes is None:
            return None
        under_way = method == "CANCEL" or method == "ACK"
        try:
            return router.toward_cluster_routed(routes, call_id, (from_tag, to_tag), under_way)
        except ParseError:
            return None  # a Route URI the parser refuses: 400 from the present path

    def _created(
        self, method: str, start: str, lines: list[str], seen: HeadLines, top: str, peer: Peer
    ) -> Forward | None:
        """An INVITE, SUBSCRIBE or REFER with no Route, no Record-Route yet (ours would
        go on top of it) and no To tag (with one, no Record-Route is added: declined):
        what Router.route decides for it (``Router.toward_cluster_created``), when its
        From tag, To, Contacts and top Via (``top``) read plainly; else None. Nothing is
        counted or changed by asking but the Router's and this relay's memos."""
        router = self.router
        if router is None or ":" in peer.host or seen.record_routes:
            return None
        call_id = call_id_of(lines[seen.call_id])
        from_tag = tag_of(lines[seen.from_], "From")
        if not call_id or not from_tag or not untagged(lines[seen.to], "To"):
            return None
        via = self._via_address(top)
        if via is None:
            return None
        uri = start[len(method) + 1 : len(start) - len(VERSION) - 1]
        try:
            contacts = router.read_contacts([lines[at] for at in seen.contacts])
        except ParseError:
            return None  # 400 from the present path
        sips = uri[:5].lower() == "sips:"
        return router.toward_cluster_created(call_id, from_tag, via, contacts, sips, peer)

    def _via_address(self, top: str) -> tuple[str, int] | None:
        """The host (without brackets) and port (5060 when none is written) of the Via
        ``top`` as ``Message.top_via`` reads them; None when the parser refuses it.
        Memoised by its sent-by (the text before the first ';'), which alone says them:
        the parameters after it are read apart (and checked when the Via is stamped)."""
        sent_by = top.partition(";")[0]
        known = self._via_addresses.table.get(sent_by)
        if known is None:
            try:
                via = parse_via(top)
            except ParseError:
                return None  # 400 from the present path
            known = self._via_addresses.put(sent_by, (via.host.strip("[]"), via.port or 5060))
        return known

    def _plain_forward(self, method: str, call_id_line: str) -> Forward | None:
        call_id = call_id_of(call_id_line)
        if not call_id:
            return None  # 400 from the present path
        router = self.router
        if router is None or router.pools.has_draining:
            return None  # draining: the To tag decides (Router._under_way)
        return router.toward_proxies(call_id, method == "CANCEL" or method == "ACK")

    def _screened(
        self, method: str, lines: list[str], seen: HeadLines, peer: Peer, now: float
    ) -> bool:
        """A request taken here, counted as SipEndpoint._deliver counts one, then
        screened by the edge guard (rate, scanner User-Agent) as Balancer.on_request
        screens it: True when blocked (over UDP, dropped: nothing to send)."""
        count_request(self.endpoint, method)
        self.requests += 1
        guard = self.guard
        agent = lines[seen.agent] if seen.agent else ""
        return guard is not None and bool(guard.screen(agent, peer, now))

    def _client_via(self, top: str, peer: Peer, salt: str) -> tuple[str, str | None] | None:
        """The branch of our Via (``carried_branch``) and the client's top Via ``top`` as
        it is forwarded (``StatelessForwarder.stamped``: None, as it is); None when the
        present path is to answer 400 or hash the branch from the request.

        Memoised, as the response's destination is, by the Via without its branch value
        (the one part that changes from one transaction to the next), the source and the
        salt: what is put around the branch value depends on nothing else, once the
        value is one the Via parser reads the same way and one that is carried."""
        sent_by, _, params = top.partition(";")
        end = params.find(";")
        branch = params[len(BRANCH) : end] if end >= 0 else params[len(BRANCH) :]
        tail = params[end:] if end >= 0 else ""
        if not (params.startswith(BRANCH) and _carried(branch)):
            return self._client_via_parsed(top, peer, salt)
        key = (sent_by, tail, peer.host, peer.port, salt)
        known = self._clients.table.get(key)
        if known is None:
            exact = self._client_via_parsed(top, peer, salt)
            if exact is None:
                return None
            known = _around_branch(exact, sent_by, branch, tail)
            if known is None:
                return exact
            self._clients.put(key, known)
        head, after = known
        stamped = None if after is None else f"{sent_by};{BRANCH}{branch}{after}"
        return head + branch[len(BRANCH_COOKIE) :], stamped

    def _client_via_parsed(self, top: str, peer: Peer, salt: str) -> tuple[str, str | None] | None:
        try:
            via = parse_via(top)
            branch = carried_branch(via, salt)
            stamped = self.forwarder.stamped(via, peer)
        except ParseError:
            return None  # 400 from the present path
        return None if branch is None else (branch, stamped)

    def _send_request(self, data: bytes, destination: Destination, top: str, peer: Peer) -> None:
        forwarder = self.forwarder
        try:
            self.endpoint.send_bytes(data, destination)
        except TransportError as failed:
            forwarder.stats.send_errors += 1
            if isinstance(failed, MessageTooLarge):  # 513, from the request as forwarded
                with contextlib.suppress(ParseError):  # (our own bytes: they parse)
                    request = parse_message(data, len(data))
                    if isinstance(request, Request):
                        forwarder.answer_too_large(request, parse_via(top), peer)
            return
        forwarder.stats.requests_forwarded += 1

    # -- responses -------------------------------------------------------------------------
    def _response(self, data: bytes, text: str, peer: Peer) -> bool:
        head_end = head_end_of(text)
        if head_end < 0:
            return False
        lines = text[:head_end].split("\r\n")
        status = _status(lines[0])
        if status == 0 or len(lines) < 3 or not clean(lines):
            return False
        cut = _our_via(lines)
        if cut is None:
            return False
        ours, hop, kept, same_line = cut
        if not HeadLines(lines, len(data) - head_end - 4, 3 - same_line).known:
            return False
        destination = self._destination(ours, hop, status)
        if destination is None:
            return False
        if OC_VALUE in ours:  # a registrar asks for a loss: under overload, every answer
            heard_loss = self.heard_loss
            if heard_loss is None:
                return False
            heard_loss(ours, peer)
        endpoint = self.endpoint
        endpoint.stats.responses_received += 1
        endpoint.responses_received_by_class[status // 100] += 1
        self.responses += 1
        # what pop_first_value and serialize give: our line gone, or its rest kept
        at = len(lines[0]) + 2
        if same_line:
            relayed = data[:at] + VIA_BYTES + data[at + kept :]
        else:
            relayed = data[:at] + data[at + kept :]
        forwarder = self.forwarder
        read = self._read_next
        try:
            endpoint.send_bytes(relayed, destination)
        except TransportError:
            forwarder.stats.send_errors += 1
        else:
            forwarder.stats.responses_forwarded += 1
        if read:  # as Balancer.on_response: read once it is relayed (or lost)
            self._answer_read(lines, status, ours, peer)
        return True

    def _answer_read(self, lines: list[str], status: int, ours: str, peer: Peer) -> None:
        """The answer whose head is ``lines`` handed to the Balancer's reading
        (``answered``) as a ``Response`` of its header lines, which is all it reads
        (the status, CSeq, Contact, Expires, To, a challenge's ``stale``)."""
        answered = self.answered
        if answered is None:
            return
        head = lines[1:]
        reason = lines[0][len(RESPONSE_START) + 4 :]
        answered(Response(status, reason, head, [name_key(line) for line in head]), ours, peer)

    def _destination(self, ours: str, hop: str, status: int) -> Destination | None:
        """Where the present path sends a response whose Vias are ``ours`` (ours, as we
        wrote it, ``_ours_plain``) then ``hop``; None: declined.

        Memoised by the two Vias' exact text, for the rest of a transaction whose
        ``provisional`` response (1xx) came first: its final response (an INVITE's 180
        and 200 after its 100) repeats them, and what is decided here depends on nothing
        else; a final response is not kept (nothing of its transaction follows). Kept
        by our Via alone, with the next Via to compare: one string hashed per response.
        A miss asks ``_next_hop``, memoised across transactions."""
        self._read_next = False
        known = self._transactions.table.get(ours)
        if known is not None and known[0] == hop:
            return known[1]
        flow = self._written_flow(ours)
        if flow is not None:
            destination = self._next_hop(hop, ours, True, flow)
        else:
            plain = self._ours_plain(ours, status)
            if plain == DECLINED:
                return None
            destination = self._next_hop(hop, ours, plain == PLAIN)
            self._read_next = plain == MARKED and destination is not None
        if destination is not None and status < 200:
            self._transactions.put(ours, (hop, destination))
        return destination

    def _written_flow(self, ours: str) -> str | None:
        """The ``sfi`` of our Via ``ours`` ("" for none) when it is written as we write
        it with nothing but its branch and ``sfi`` (``written_flow``: none of the marks
        a ';' starts), its branch value not one of the Balancer's probes'; None: read
        the long way (``_ours_plain``)."""
        if not self._marks_apart:
            return None
        return self.forwarder.written_flow(ours, self._branch_marks)

    def _ours_plain(self, ours: str, status: int) -> int:
        """Our Via as we wrote it: PLAIN without marks; LEARNING with ``learn_mark`` in
        an answer it is not read from (not a 2xx); MARKED with one of ``read_marks`` in
        a final answer (the flow mark in a 2xx only), the rest of its marks as for
        LEARNING; else DECLINED (a probe's branch). The marks are each looked for once:
        this runs for every response."""
        learn_mark = self.learn_mark
        learning = marked = False
        for mark in self.marks:
            if mark in ours:
                if mark == learn_mark and not 200 <= status < 300:
                    learning = True
                elif status >= 200 and mark in self.read_marks:
                    marked = True
                else:
                    return DECLINED
        if not self.forwarder.wrote(ours):
            return DECLINED
        return MARKED if marked else LEARNING if learning else PLAIN

    def _next_hop(
        self, hop: str, ours: str, memo: bool = True, flow: str | None = None
    ) -> Destination | None:
        """Where the present path sends a response whose Vias are ``ours`` then ``hop``
        (StatelessForwarder.next_hop), when that is a UDP IPv4 destination; else None.

        Memoised by the next Via without its branch value, which alone changes from one
        transaction to the next (where a response goes does not depend on it, once it
        is checked to be one the Via parser reads the same way: plain, not empty, no
        '='), and by the one thing of ours the forwarder reads (``flow_of``: the socket
        it goes out by)."""
        if not memo:  # a flow token and a Contact's digest in ours: a key per phone
            return self._next_hop_parsed(hop, ours)
        hop_key = _without_branch(hop)
        if not hop_key:
            return self._next_hop_parsed(hop, ours)
        if flow is None:
            try:
                flow = flow_of(ours)
            except ParseError:
                return None  # the present path counts it
        key = f"{hop_key}\x00{flow}"
        known = self._hops.table.get(key)
        if known is None:
            known = self._next_hop_parsed(hop, ours)
            if known is not None:
                self._hops.put(key, known)
        return known

    def _next_hop_parsed(self, hop: str, ours: str) -> Destination | None:
        try:
            destination = self.forwarder.next_hop(parse_via(hop), ours)
        except ParseError:
            return None  # the present path counts it
        if destination is None or destination.transport != "udp" or ":" in destination.host:
            return None
        return destination


def _without_branch(via: str) -> str:
    """``via`` with its branch value cut out ("" when the branch is not its first
    parameter, or not a value the Via parser reads as plainly)."""
    semi = via.find(";")
    if semi < 0 or via.find(BRANCH_PARAM, semi, semi + len(BRANCH_PARAM)) != semi:
        return ""
    start = semi + len(BRANCH_PARAM)
    end = via.find(";", start)
    branch = via[start:end] if end >= 0 else via[start:]
    if not _plain(branch) or "=" in branch:
        return ""
    return via[:start] + via[end:] if end >= 0 else via[:start]


def _plain(branch: str) -> bool:
    """Whether ``branch`` is not empty and holds only PLAIN_PARAM_CHARS: letters and
    digits with '-' and '.' (every branch seen) without a regex call, else the regex."""
    return alnum_dash_dot(branch) or match_plain_params(branch) is not None


def _carried(branch: str) -> bool:
    """A branch value ``carried_branch`` carries (RFC 3261, short), that the Via parser
    reads as plain parameter text."""
    if len(branch) > MAX_CARRIED_BRANCH or len(branch) <= len(BRANCH_COOKIE):
        return False
    return branch.startswith(BRANCH_COOKIE) and "=" not in branch and _plain(branch)


def _around_branch(
    exact: tuple[str, str | None], sent_by: str, branch: str, tail: str
) -> tuple[str, str | None] | None:
    """What ``_client_via`` puts around a branch value, from one exact result: our
    branch's head (before the carried part) and the stamped Via's text after the branch
    value (None: not stamped); None when the results do not read so (then not memoised:
    a tail naming a branch again, a sent-by the parser writes another way)."""
    ours, stamped = exact
    carried = branch[len(BRANCH_COOKIE) :]
    if not ours.endswith("." + carried) or "branch" in tail.lower():
        return None
    head = ours[: len(ours) - len(carried)]
    if stamped is None:
        return head, None
    before = sent_by + ";" + BRANCH + branch
    if not stamped.startswith(before):
        return None
    return head, stamped[len(before) :]


def _status(start: str) -> int:
    """The status code of ``SIP/2.0 NNN reason``, as the parser reads it; 0: declined.
    Memoised by the line, as the parser does (a few status lines make most traffic)."""
    known = _STATUS_CODES.table.get(start)
    if known is None:
        known = _STATUS_CODES.put(start, _read_status(start))
    return known


def _read_status(start: str) -> int:
    code = start[8:11]
    if start[11:12] != " " or not (code.isdigit() and code.isascii()):
        return 0
    status = int(code)
    return status if 100 <= status <= 699 else 0


def _our_via(lines: list[str]) -> tuple[str, str, int, int] | None:
    """Our Via (the top one, on the first header line), the next Via's text, how many
    characters after our line's start are dropped, and 1 when what follows ours is on
    its line (then kept as ``Via: <rest>``, as Message.pop_first_value writes it), 0
    when it is the next line. None when the two are not written plainly: ``Via: `` lines
    without quote or ``<`` (a comma could be inside them), not folded."""
    line = lines[1]
    if not _plain_via_line(line) or lines[2][:1] in WS:
        return None
    comma = line.find(",")
    if comma < 0:
        hop_line = lines[2]
        if not _plain_via_line(hop_line) or (len(lines) > 3 and lines[3][:1] in WS):
            return None
        ours = line[len(VIA_LINE) :].strip(WS)
        hop = hop_line[len(VIA_LINE) :].partition(",")[0].strip(WS)
        kept = len(line) + 2
        same_line = 0
    else:
        ours = line[len(VIA_LINE) : comma].strip(WS)
        kept = comma + 1
        while kept < len(line) and line[kept] in REST_BLANKS:
            kept += 1
        hop = line[kept:].partition(",")[0].rstrip(WS)
        same_line = 1
    if not ours or not hop:
        return None
    return ours, hop, kept, same_line


def _plain_via_line(line: str) -> bool:
    """A ``Via:`` line whose values a comma separates: no ``<``, and no quote but those
    of a registrar's ``oc-algo="loss"`` (RFC 7339), which hold no comma."""
    if not line.startswith(VIA_LINE) or "<" in line:
        return False
    return '"' not in line or '"' not in line.replace(OC_LOSS_ALGORITHM, "")


def _method(start: str) -> str:
    """The method of a request line the parser takes as it is (``METHOD URI SIP/2.0``),
    when it is one of ROUTED_METHODS (not REGISTER); else "". Memoised by the line (a
    dialog's requests share theirs)."""
    method = _METHODS.table.get(start)
    if method is None:
        method = _METHODS.put(start, _read_method(start))
    return method


def _read_method(start: str) -> str:
    parts = start.split(" ")
    if len(parts) != 3 or parts[2] != SIP_VERSION or not parts[1]:
        return ""
    return parts[0] if parts[0] in ROUTED_METHODS else ""


def _plain_method(method: str, start: str) -> bool:
    """Whether the Router forwards ``method`` plainly when there is no Route: creating
    no dialog, and not an OPTIONS whose URI has no user part (it may be for the LB
    itself; no '@' in the request line is none in its URI)."""
    return method in PLAIN_METHODS and (method != "OPTIONS" or "@" in start)


def _refusal(lines: list[str]) -> bytes:
    """``make_response(request, 503, "Overloaded", headers=RETRY)`` of the request whose
    head is ``lines`` (its header names all known: ``HeadLines.known``)."""
    keys = HEADER_KEYS.table
    copied = [REFUSAL_START]
    for at in range(1, len(lines)):
        line = lines[at]
        if keys.get(line[: line.find(":")], "") in COPIED_IN_RESPONSES:
            copied.append(line)
    copied.append(REFUSAL_END)
    return "\r\n".join(copied).encode("latin-1")


def _add_record_routes(lines: list[str], last_via: int, record_routes: tuple[str, ...]) -> None:
    """Each Record-Route added on top, as Message.add_record_route adds it to a request
    that has none, the last one added first."""
    added = [header_line("record-route", value) for value in reversed(record_routes)]
    _add_below_vias(lines, last_via, added)


def _add_below_vias(lines: list[str], last_via: int, added: list[str]) -> None:
    """Header lines ``added`` as Message.add_header(top=True) puts a routing header the
    request has none of: below the last Via line (``last_via``)."""
    lines[last_via] += "\r\n" + "\r\n".join(added)
