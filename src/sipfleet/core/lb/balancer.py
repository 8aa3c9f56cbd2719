"""The LB's SipHandler: requests routed by the Router and forwarded statelessly;
responses back by Via, after the LB has read what is for itself (answers to its probes
and pings, what a REGISTER 2xx says about a flow).

Overload (``core/overload.py``, fed by the worker's UDP backlog): the LB is the first hop
that can refuse cheaply. While it lasts, a new request from a client (no To tag, not
ACK or CANCEL, no credentials) gets a stateless 503 with Retry-After, as many as the
answer budget allows, and is dropped past it; responses, in-dialog requests, answers to
challenges and whatever the cluster sends are relayed as ever, so calls and
registrations under way finish. Without this a
saturated LB dropped datagrams at its socket, and each came back as a retransmission it
relayed again (measured: digest registrations at twice the maximum, 80-84 % goodput).
"""

from __future__ import annotations

import logging
import time

from sipfleet.core.lb import handoff
from sipfleet.core.lb.budget import LogBudget
from sipfleet.core.lb.edge import AUTH_MARK, DROP, REFUSE, EdgeGuard
from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.core.lb.fastpath import FastRelay
from sipfleet.core.lb.keepalive import learned
from sipfleet.core.lb.pinger import Keepalives
from sipfleet.core.lb.probes import HealthChecker
from sipfleet.core.lb.router import RETRY_AFTER, AnswerHere, Forward, HandOff, Reject, Router
from sipfleet.core.overload import (
    OC_SUPPORTED,
    OC_VALUE,
    AnswerBudget,
    LossControl,
    LossFeedback,
    OverloadMonitor,
    answers_a_challenge,
    without_loss_answer,
)
from sipfleet.core.stateless import StatelessForwarder
from sipfleet.sip import ParseError, Request, Response
from sipfleet.sip.builders import make_response
from sipfleet.sip.flow import FlowTokens
from sipfleet.transport.base import Peer, TransportError

log = logging.getLogger(__name__)
OUR_BRANCHES = "branch=z9hG4bK-lb"  # what PROBE_BRANCH and KEEPALIVE_BRANCH start with
LEARN_MARK = ";lbf="
LOSS_TOLD_EVERY = 0.1  # seconds: a registrar's unchanged loss, told again (validity 0.5 s)
OWN_SHARE_SUSTAIN = 0.3  # seconds of growing backlog before the LB refuses a share itself
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, REFER, MESSAGE"


class Balancer:
    def __init__(
        self,
        endpoint: LbEndpoint,
        router: Router,
        forwarder: StatelessForwarder,
        health: HealthChecker,
        keepalives: Keepalives,
        tokens: FlowTokens,
        overload: OverloadMonitor | None = None,
        guard: EdgeGuard | None = None,
    ) -> None:
        """``guard``: abuse protection (core/lb/edge.py); None: none."""
        self.endpoint = endpoint
        self.router = router
        self.forwarder = forwarder
        self.health = health
        self.keepalives = keepalives
        self.tokens = tokens
        self.refused_tokens = 0
        self.overload = overload or OverloadMonitor()
        self.shed = 0  # new requests answered 503 while overloaded
        self.shed_dropped = 0  # the same past the answer budget: dropped
        # RFC 7339 (REGISTERs carry our ``oc``): the share of new REGISTERs to refuse for
        # each registrar, and for the LB's own backlog (``observe``); ``refused`` counts
        # them. The own share waits longer than a registrar's (0.2 s): what a registrar
        # asks is the truer signal of where the excess lies.
        self.own_share = LossControl(
            sustain=OWN_SHARE_SUSTAIN,
            refusing="refusing a share of new REGISTERs",
            refusing_none="none refused",
        )
        self.loss = LossFeedback(own=self.own_share)
        self._dropped_then = 0  # the edge guard's drops and our relays at the last check
        self._relayed_then = 0
        self._loss_told: dict[tuple[str, int], float] = {}  # when the others were told
        self.answer_budget = AnswerBudget()
        self._refusals = LogBudget(log)
        self.guard = guard
        endpoint.on_handoff = self.handed
        # The usual requests and responses go from their bytes (core/lb/fastpath.py):
        # answers to our probes come here; those with the lockout mark or the flow mark
        # (in a 2xx) are read by read_marks once relayed.
        marks = (OUR_BRANCHES, AUTH_MARK, LEARN_MARK)
        endpoint.fast = FastRelay(
            endpoint,
            forwarder,
            marks,
            router,
            guard,
            self.overload,
            self.loss,
            LEARN_MARK,
            self.heard_loss,
            self.read_marks,
            (AUTH_MARK, LEARN_MARK),
            self.shed_one,
            self.answer_budget.served,
        )

    # -- overload ----------------------------------------------------------------------------
    def observe(self, now: float, lag: float, backlog: int) -> None:
        """One overload check (``overload.watch``): the LB's own share of new REGISTERs,
        then the monitor that refuses every new request.

        The share is fed no backlog while the edge guard drops more than the LB relays:
        such a backlog is one source's flood, cheap to drop, which refusing phones would
        not shorten (tests/interop/test_abuse.py failed so, before this). The monitor
        is fed none while the share refuses some and is not at its floor: it would
        refuse what the share answers, parsed, and past its answer budget drop it, each
        drop coming back as a retransmission (most of those at the onset of twice the
        maximum, docs/benchmarks.md); an overload the share cannot relieve (not of
        REGISTERs) takes it to its floor within a second, and the monitor then acts."""
        stats = self.forwarder.stats
        dropped = self.guard.dropped() if self.guard is not None else 0
        relayed = stats.requests_forwarded + stats.responses_forwarded
        flooded = dropped - self._dropped_then > relayed - self._relayed_then
        self._dropped_then, self._relayed_then = dropped, relayed
        share = self.own_share
        share.observe(now, 0 if flooded else backlog)
        sharing = share.floor < share.admitted < 1.0
        self.overload.observe(now, 0.0 if sharing else lag, 0 if sharing else backlog)

    # -- requests ----------------------------------------------------------------------------
    def on_request(self, request: Request, peer: Peer) -> None:
        if self.overload.overloaded:
            if self._sheddable(request, peer):
                self._shed(request, peer)
                return
            self.answer_budget.served()
        mark = ""
        if self.guard is not None:
            mark = self.guard.check(request, peer, time.monotonic())
            if mark in (DROP, REFUSE):
                self._blocked(request, peer, mark)
                return
        decision = self.router.route(request, peer)
        if type(decision) is Forward:
            if request.method == "REGISTER":
                self._register(request, peer, decision, mark)
            else:
                self._forward(request, peer, decision, mark)
        elif isinstance(decision, Reject):
            self._reject(request, peer, decision)
        elif isinstance(decision, HandOff):
            self.endpoint.hand_over(decision.worker, handoff.Received(request.serialize(), peer))
        elif isinstance(decision, AnswerHere) and request.method != "ACK":
            headers = [("Allow", ALLOW), ("Accept", "application/sdp")]
            self._answer(request, peer, 200, "OK", headers)

    def _blocked(self, request: Request, peer: Peer, verdict: str) -> None:
        """A request the edge guard refused: nothing sent back (DROP), or a 503."""
        if verdict == REFUSE and request.method != "ACK":
            headers = [("Retry-After", RETRY_AFTER)]
            self._answer(request, peer, 503, "Too Many Requests", headers)

    def _sheddable(self, request: Request, peer: Peer) -> bool:
        """A new request from a client: refusing it costs no call or registration that
        is under way, nor a challenge already answered (``answers_a_challenge``).
        (A malformed To header: left for the router's answer.)"""
        if request.method == "ACK" or request.method == "CANCEL":
            return False
        if answers_a_challenge(request):
            return False
        try:
            if request.to.tag is not None:
                return False
        except ParseError:
            return False
        return not self.router.from_cluster(peer)

    def _shed(self, request: Request, peer: Peer) -> None:
        if self.shed_one():
            self._answer(request, peer, 503, "Overloaded", [("Retry-After", RETRY_AFTER)])

    def shed_one(self) -> bool:
        """A new request refused while overloaded, counted: True when it is to be
        answered (503, within the answer budget), False when dropped."""
        if self.answer_budget.take():
            self.shed += 1
            return True
        self.shed_dropped += 1
        return False

    def _register(self, request: Request, peer: Peer, decision: Forward, mark: str) -> None:
        """A REGISTER takes part in its registrar's overload control (RFC 7339): a new
        exchange (``_sheddable``) drawn into the share its registrar asks for, or the
        LB's own backlog does (``observe``), gets 503 here (always answered: that costs a
        fraction of relaying it, and stops the phone's retransmissions); the rest is
        relayed with our Via saying ``oc``."""
        destination = decision.destination
        if (
            self.loss
            and self._sheddable(request, peer)
            and self.loss.refuses(
                (destination.host, destination.port), time.monotonic(), _draw(request)
            )
        ):
            self.loss.count_refusal()
            self._answer(request, peer, 503, "Overloaded", [("Retry-After", RETRY_AFTER)])
            return
        self._forward(request, peer, decision, mark + OC_SUPPORTED)

    def _forward(self, request: Request, peer: Peer, decision: Forward, mark: str = "") -> None:
        for _ in range(decision.pop_routes):
            request.pop_first_value("route")
        for record_route in decision.record_routes:
            request.add_record_route(record_route)
        if decision.path is not None:
            request.add_path(decision.path)
        self.forwarder.forward_request(
            request,
            peer,
            decision.destination,
            sent_by=decision.sent_by,
            via_params=decision.via_params + mark if mark else decision.via_params,
        )

    def _reject(self, request: Request, peer: Peer, decision: Reject) -> None:
        if decision.why is not None:
            self.refused_tokens += 1
            self._refusals.log(logging.WARNING, "%s: %d", decision.why, decision.status)
        if request.method != "ACK":
            self._answer(request, peer, decision.status, decision.reason, list(decision.headers))

    def _answer(
        self, request: Request, peer: Peer, status: int, reason: str, headers: list[tuple[str, str]]
    ) -> None:
        try:
            response = make_response(request, status, reason, headers=headers)
            self.endpoint.send_response(response, peer.reply_to)
        except (TransportError, ParseError) as exc:
            log.debug("%d to %s:%s not sent: %s", status, peer.host, peer.port, exc)

    # -- responses --------------------------------------------------------------------------
    def on_response(self, response: Response, peer: Peer) -> None:
        top = response.first_value("via")  # the other Vias are not split
        if top is None:
            return
        if OUR_BRANCHES in top:
            if not self.health.answered(top):
                self.keepalives.answered(top)
            return
        if OC_VALUE in top:
            self.heard_loss(top, peer)
        self.forwarder.forward_response(response, peer)
        self.read_marks(response, top, peer)

    def read_marks(self, response: Response, top: str, peer: Peer) -> None:
        """What an answer whose Via (ours, ``top``) carries our marks tells, once it is
        relayed: the edge guard's lockout mark, how the credentials fared; a REGISTER's
        flow mark, in a 2xx, the registration that keeps the flow alive. The fast path
        hands over the answers it relays with them."""
        if AUTH_MARK in top and self.guard is not None:
            self.guard.answered(response, top, peer, time.monotonic())
        if LEARN_MARK in top:
            try:  # a registrar's loss answer is not ours to read here (and slow to parse)
                news = learned(response, without_loss_answer(top), self.tokens)
            except ParseError as exc:
                log.debug("REGISTER answer %r: nothing learned: %s", response, exc)
                return
            if news is not None:
                self.keepalives.learned(news)

    def heard_loss(self, top: str, peer: Peer) -> None:
        """Overload control in our Via, from a member of the cluster only: nothing from
        outside may make the LB refuse requests."""
        if not self.router.from_cluster(peer):
            return
        server, now = (peer.host, peer.port), time.monotonic()
        changed = self.loss.heard_via(server, top, now)
        if changed or now - self._loss_told.get(server, -1e18) >= LOSS_TOLD_EVERY:
            self._tell_loss(server, now)

    def _tell_loss(self, server: tuple[str, int], now: float) -> None:
        """The other workers refuse for the registrar too: a change at once, the same
        loss again before their copy lapses."""
        endpoint = self.endpoint
        if len(endpoint.siblings) < 2:
            return
        self._loss_told[server] = now
        loss, until, seq = self.loss.asked(server)
        told = handoff.Loss(server[0], server[1], loss, round(max(0.0, until - now) * 1000), seq)
        for worker in endpoint.siblings:
            if worker != endpoint.worker_index:
                endpoint.hand_over(worker, told)

    # -- what other workers hand over --------------------------------------------------------
    def handed(self, message: handoff.Handed, sender: int) -> None:
        if isinstance(message, handoff.Learn):
            self.keepalives.handed_learn(message)
        elif isinstance(message, handoff.Answered):
            self.keepalives.handed_answer(message.flow_id)
        elif isinstance(message, handoff.Loss):
            validity = message.validity_ms / 1000
            server = (message.host, message.port)
            self.loss.take(server, message.loss, validity, message.seq, time.monotonic())

    def counters(self) -> dict[str, int]:
        return {
            **self.endpoint.counters(),
            **self.forwarder.counters(),
            **self.keepalives.counters(),
            "refused_tokens": self.refused_tokens,
            "shed": self.shed,
            "shed_dropped": self.shed_dropped,
            "shed_for_servers": self.loss.refused - self.loss.refused_own,
            "shed_for_own_backlog": self.loss.refused_own,
            "overload_episodes": self.overload.episodes,
            "probes_sent": self.health.probes_sent,
            **(self.guard.counters() if self.guard is not None else {}),
        }


def _draw(request: Request) -> str:
    """What decides whether a REGISTER is refused for its registrar (``LossFeedback``):
    the same for its retransmissions, new for each attempt (FastRelay draws alike)."""
    return request.call_id + " " + (request.first_value("via") or "")
