"""The registrar's request handling: authenticate a REGISTER, write its bindings
straight to SQL, answer.

No binding is kept in memory; what the 200 OK lists comes back from the database in the
same round trip as the write. The rules live in sipfleet.sip.registration, the nonces in
sipfleet.sip.auth, the SQL in sipfleet.storage; this module joins them.

Overload (DESIGN §6): at most ``database.max_in_flight`` REGISTERs are worked on at once,
and none is started while more than ``MAX_BACKLOG`` bytes of datagrams wait unread behind
it (the receive queue, read per request: one getsockopt). Past either limit a REGISTER
gets 503 with Retry-After at once, which stops the client's retransmissions, as long as
the answer budget lasts (core/overload.py: half a 503 earned per REGISTER served); past
the budget it is dropped unanswered and forgotten, so its retransmission is a new request.
Retransmissions of one in progress are absorbed. Reading everything keeps the receive
queue short, so what is served is answered before its client retransmits (a registrar
that let its buffer fill fell to a third of its capacity at twice it); the budget keeps
the answers to what is shed from eating the CPU that serving needs (answering every one
left 43 % of the capacity at twice it; with the budget, 99 %: docs/benchmarks.md).

Before its own marks are reached, the same backlog steers RFC 7339 overload control: the
answers to REGISTERs whose top Via says ``oc`` (the LB's) ask for a share of new
REGISTERs to be refused at the LB, where that costs far less than here (``LossControl``,
docs/lb.md "Refusing for an overloaded registrar").

Storage stalls (a held lock, a slow disk, a database that stops answering) are not
overload of this process: the REGISTERs would just wait, each up to the backend's own
time limit, and the clients would hear nothing. So a REGISTER that has waited
``STORAGE_DEADLINE`` for its answer gets 503 with Retry-After (its late outcome is
dropped), and that marks the storage stalled (``StallGuard``): new REGISTERs then get the
same 503 at once, whatever the answer budget (nothing is being served that the answers
could starve), except one at a time, the probe, which goes on to the database; the first
write that completes ends the stall. It works the same for every backend, none of which
needs to notice the stall itself.

A database that answers but cannot take the REGISTER (``StorageUnavailable``: connection
refused, a Galera node outside the primary component, a read-only standby, a full disk)
gets the same 503 with Retry-After, as the proxy answers a call then (RFC 3261 §21.5.4:
temporarily unable to process). A 503 is what sends an RFC 3263 client, or an edge proxy,
on to another server, such as the other site of a Galera cluster; 500 would say this
server has a bug, and stays for that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sipfleet.config import Config
from sipfleet.core.answered import AnsweredRequests, Key, Seen, request_key
from sipfleet.core.authenticate import Challenge, authenticate, authority_for
from sipfleet.core.lb.budget import LogBudget
from sipfleet.core.overload import AnswerBudget, LossControl, answers_a_challenge, no_backlog
from sipfleet.sip import ParseError, Request, Response, validate_request
from sipfleet.sip.builders import make_response, new_tag
from sipfleet.sip.grammar import Params
from sipfleet.sip.registration import (
    AddressOfRecord,
    ContactChange,
    RegistrarSettings,
    RegistrationPlan,
    Rejection,
    address_of_record,
    plan_registration,
    registered_headers,
    unsupported_extensions,
)
from sipfleet.sip.via import Via
from sipfleet.stats import TRANSACTION_BUCKETS, Histogram
from sipfleet.storage import Storage
from sipfleet.storage.errors import (
    InvalidInput,
    StorageOverloaded,
    StorageUnavailable,
    TooManyContacts,
)
from sipfleet.storage.model import Binding, BindingUpdate
from sipfleet.transport.base import Destination, Peer

log = logging.getLogger(__name__)


class AnswerSender(Protocol):
    """What the registrar sends its answers through (a SipEndpoint): only that, so its
    tests can hand it anything that keeps them."""

    def send_bytes(self, data: bytes, destination: Destination, /) -> None: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """A final response to send: status, reason phrase, extra headers."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)


ALLOW = "REGISTER, OPTIONS"
RETRY_AFTER = "5"
OVERLOADED = Answer(503, "Overloaded", [("Retry-After", RETRY_AFTER)])
STALLED = Answer(503, "Database Not Answering", [("Retry-After", RETRY_AFTER)])
UNAVAILABLE = Answer(503, "Service Unavailable", [("Retry-After", RETRY_AFTER)])
# Warnings about an unavailable database per minute: an outage refuses every REGISTER, and
# must not flood the log with one line each (about one every 10 s, as the proxy writes).
UNAVAILABLE_WARNINGS_PER_MINUTE = 6
# Seconds a REGISTER may wait for its answer before it gets 503: far above what a write
# takes under load (milliseconds; the receive queue is kept under a quarter of a second),
# far below the client's patience (Timer F, 32 s; a phone shows an error long before).
STORAGE_DEADLINE = 1.0
DEADLINE_CHECKS = 4  # deadline checks per STORAGE_DEADLINE while REGISTERs are pending
# Bytes of datagrams waiting behind a REGISTER past which it is shed. Kernel accounting:
# ~1.3 KB per REGISTER, so about 1,600 REGISTERs, a quarter of a second of one worker's
# work: under a retransmission interval (T1 = 0.5 s), and above the bursts of ~1 MB seen
# at two thirds of capacity (the process waits for a core, the load generator catches up).
MAX_BACKLOG = 2 << 20
OC_PARAM = "oc"  # a client's Via says it takes part in overload control (RFC 7339)
OC_LAST = ";oc"  # the LB writes it last in its Via, without a value


class StallGuard:
    """Whether storage has stalled, from how long REGISTERs wait for it (no clock, no
    I/O: times are passed in). A REGISTER that waits ``deadline`` or more marks it
    stalled; while it is, new REGISTERs are refused, but one at a time is let through
    (the probe); a completed write ends the stall."""

    def __init__(self, deadline: float = STORAGE_DEADLINE) -> None:
        self.deadline = deadline
        self.stalled = False
        self.probing = False  # a probe is on its way to the database
        self.stalls = 0  # counter: stalls seen

    def admit(self) -> bool:
        """May a new REGISTER go to the database? While stalled, only as the probe."""
        if not self.stalled:
            return True
        if self.probing:
            return False
        self.probing = True
        return True

    def overdue(self, started: float, now: float) -> bool:
        """Has a REGISTER started at ``started`` waited too long? Then storage stalls."""
        if now - started < self.deadline:
            return False
        if not self.stalled:
            self.stalled = True
            self.stalls += 1
            log.warning(
                "database: no answer within %.1f s: REGISTERs get 503 until a write completes",
                self.deadline,
            )
        return True

    def settled(self, probe: bool, wrote: bool) -> None:
        """A REGISTER's work ended; ``wrote``: its write (or lookup) completed."""
        if probe:
            self.probing = False
        if wrote and self.stalled:
            self.stalled = False
            log.warning("database: answering again")


@dataclass(eq=False, slots=True)
class _Work:
    """One REGISTER on its way through authentication and storage."""

    request: Request
    peer: Peer
    key: Key | None
    started: float  # the registrar's clock
    probe: bool  # let through while storage stalled, to see whether it answers again
    answered: bool = False  # 503 at the deadline: its outcome, when it comes, is dropped
    spent: bool = False  # its credentials were accepted: their nonce-count is used up
    wrote: bool = False  # its write or lookup completed: the database answers


class Registrar:
    """The SipHandler of the registrar role."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        endpoint: AnswerSender,
        *,
        backlog: Callable[[], int] = no_backlog,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``backlog``: bytes waiting in the listening UDP sockets (``receive_backlog``);
        ``clock``: seconds, for the answer cache and the storage deadline; ``wall_clock``:
        the time of day, for the bindings' expiry and the nonces' age."""
        section = config.registrar
        self.config = config
        self.storage = storage
        self.endpoint = endpoint
        self.settings = RegistrarSettings(
            domains=frozenset(d.lower() for d in config.sip.domains),
            default_expires=section.default_expires,
            min_expires=section.min_expires,
            max_expires=section.max_expires,
        )
        self.authority = authority_for(config)
        self.trusted_lbs = frozenset(section.trusted_lbs)
        self.max_in_flight = config.database.max_in_flight
        # Timer F: a client retransmits a REGISTER for 64 x T1.
        self.answered = AnsweredRequests(window=64 * config.sip.t1_ms / 1000)
        self.backlog = backlog
        self.clock = clock
        self.wall_clock = wall_clock
        self.shed = 0  # REGISTERs answered 503 because of overload
        self.dropped = 0  # REGISTERs dropped unanswered: overload past the answer budget
        self.refused_stalled = 0  # REGISTERs answered 503 because storage stalled
        self.answer_budget = AnswerBudget()
        # RFC 7339: what share of new REGISTERs the LBs should refuse for this process.
        self.loss = LossControl(high=MAX_BACKLOG // 2, low=MAX_BACKLOG // 16)
        self.stall = StallGuard()
        self._unavailable_warnings = LogBudget(log, UNAVAILABLE_WARNINGS_PER_MINUTE)
        # Seconds from a REGISTER's arrival to its answer, for those that went to work
        # (not those answered from the cache or shed): authentication and storage.
        self.register_duration = Histogram(TRANSACTION_BUCKETS)
        self._pending: set[_Work] = set()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- SipHandler ------------------------------------------------------------------------
    def on_request(self, request: Request, peer: Peer) -> None:
        if request.method == "ACK":
            return
        if request.method != "REGISTER":
            self._reply(request, peer, self._other_method(request))
            return
        key = request_key(request)
        now = self.clock()
        if key is not None:
            seen = self.answered.begin(key, now)
            if seen is Seen.IN_PROGRESS:
                return
            if isinstance(seen, bytes):
                self._send_answer(seen, peer)
                return
        if self._overloaded(request, now):
            self._shed(request, peer, key, now)
            return
        if not self.stall.admit():
            self.refused_stalled += 1
            self._finish(request, peer, key, STALLED)
            return
        work = _Work(request, peer, key, now, probe=self.stall.stalled)
        self._pending.add(work)
        self._watch_deadlines()
        task = asyncio.create_task(self._register(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _overloaded(self, request: Request, now: float) -> bool:
        """Past the cap in flight or the backlog mark; for a REGISTER that answers our
        challenge (``answers_a_challenge``: shed last), past twice them. The backlog
        also steers what the LBs are asked to refuse (``self.loss``), long before the
        mark is reached."""
        backlog = self.backlog()
        self.loss.observe(now, backlog)
        factor = 2 if answers_a_challenge(request) else 1
        return (
            self.answered.in_progress > factor * self.max_in_flight
            or backlog > factor * MAX_BACKLOG
        )

    def _shed(self, request: Request, peer: Peer, key: Key | None, now: float) -> None:
        """503 with Retry-After while the budget lasts; past it, dropped unanswered and
        forgotten (its retransmission is a new request). Only over UDP: over a connection
        nothing is retransmitted, and the client would wait for Timer F (32 s)."""
        if peer.transport != "udp" or self.answer_budget.take():
            self.shed += 1
            self._finish(request, peer, key, OVERLOADED)
            return
        self.dropped += 1
        if key is not None:
            self.answered.finish(key, None, now)

    def on_response(self, response: Response, peer: Peer) -> None:
        """A registrar sends no requests; stray responses are dropped."""

    # -- the storage deadline -----------------------------------------------------------------
    def _watch_deadlines(self) -> None:
        if self._deadline_timer is None:
            delay = self.stall.deadline / DEADLINE_CHECKS
            loop = asyncio.get_running_loop()
            self._deadline_timer = loop.call_later(delay, self.check_deadlines)

    def check_deadlines(self) -> None:
        """Answer 503 to each REGISTER that has waited past the deadline (on a timer, a
        few times per deadline while any waits; the work itself goes on unanswered)."""
        self._deadline_timer = None
        now = self.clock()
        waiting = False
        for work in self._pending:
            if work.answered:
                continue
            if self.stall.overdue(work.started, now):
                work.answered = True
                self.refused_stalled += 1
                self._finish(work.request, work.peer, work.key, STALLED, spent=work.spent)
                self.register_duration.observe(now - work.started)
            else:
                waiting = True
        if waiting:
            self._watch_deadlines()

    # -- REGISTER ---------------------------------------------------------------------------
    async def _register(self, work: _Work) -> None:
        request = work.request
        try:
            answer = await self._answer(work)
        except Rejection as rejection:
            answer = Answer(rejection.status, rejection.reason, rejection.headers)
        except ParseError as unreadable:
            answer = Answer(unreadable.status, unreadable.reason)
        except StorageOverloaded:
            answer = OVERLOADED
        except StorageUnavailable as unavailable:
            self._unavailable_warnings.log(
                logging.WARNING,
                "REGISTER %s: database unavailable: %s",
                request.call_id,
                unavailable,
            )
            answer = UNAVAILABLE
        except Exception:
            log.exception("REGISTER %s failed", _call_id(request))
            answer = Answer(500, "Server Internal Error")
        self._pending.discard(work)
        self.stall.settled(work.probe, work.wrote)
        if not work.answered:
            self.answer_budget.served()
            self._finish(request, work.peer, work.key, answer, spent=work.spent)
            self.register_duration.observe(self.clock() - work.started)
        elif work.spent and work.key is not None:
            # Its 503 went out at the deadline, but its nonce-count is used up since.
            self.answered.spent(work.key, self.clock())

    async def _answer(self, work: _Work) -> Answer:
        request, peer = work.request, work.peer
        validate_request(request)
        aor = address_of_record(request, self.settings)
        unsupported = unsupported_extensions(request)
        if unsupported:
            return Answer(420, "Bad Extension", [("Unsupported", ", ".join(unsupported))])
        challenge = await self._authenticate(work, aor)
        if challenge is not None:
            return challenge
        plan = plan_registration(request, aor, self.settings, peer.host in self.trusted_lbs)
        now = self.wall_clock()
        bindings = await self._store(plan, peer, int(now))
        work.wrote = True
        headers = registered_headers(plan, bindings, now)  # type: ignore[arg-type]
        return Answer(200, "OK", headers)

    async def _authenticate(self, work: _Work, aor: AddressOfRecord) -> Answer | None:
        """None when the request may go on; else the 401/403 to answer."""
        if not self.config.registrar.authenticate:
            return None
        realm = self.config.registrar.realm or aor.domain
        outcome = await authenticate(
            self.authority,
            self.storage.subscribers,
            work.request,
            realm,
            self.wall_clock(),
            "registrar",
        )
        if isinstance(outcome, Challenge):
            return Answer(outcome.status, outcome.reason, list(outcome.headers))
        work.spent = True  # accepted: a copy would now be refused as a replay
        if outcome.username != aor.username:
            return Answer(403, "Authentication user does not match the address-of-record")
        return None

    async def _store(self, plan: RegistrationPlan, peer: Peer, now: int) -> list[Binding]:
        location = self.storage.location
        try:
            if plan.wildcard:
                await location.remove_all(plan.aor, callid=plan.call_id, cseq=plan.cseq)
                return []
            if plan.is_query:
                return await location.lookup(plan.aor, now=now)
            updates = [self._update(plan, change, peer, now) for change in plan.changes]
            return await location.save(
                plan.aor, updates, now=now, max_contacts=self.config.registrar.max_contacts
            )
        except TooManyContacts as too_many:
            limit = too_many.limit
            raise Rejection(403, f"Too many registered contacts (at most {limit})") from None
        except InvalidInput as invalid:
            raise Rejection(400, str(invalid)) from None

    def _update(
        self, plan: RegistrationPlan, change: ContactChange, peer: Peer, now: int
    ) -> BindingUpdate:
        via_lb = peer.host in self.trusted_lbs
        return BindingUpdate(
            contact=change.contact,
            expires=now + change.expires if change.expires else now,
            callid=plan.call_id,
            cseq=plan.cseq,
            q=change.q,
            received=None if via_lb else f"sip:{_hostport(peer.host, peer.port)}",
            path=plan.path,
            user_agent=plan.user_agent,
            socket=f"{peer.transport}:{_hostport(peer.local_host, peer.local_port)}",
            methods=change.methods,
            instance=change.instance,
            reg_id=change.reg_id,
            flow=_flow_token(plan.path) if via_lb else None,
        )

    # -- answers ----------------------------------------------------------------------------
    def _other_method(self, request: Request) -> Answer:
        if request.method == "OPTIONS":  # the LB's health check
            return Answer(200, "OK", [("Allow", ALLOW), ("Accept", "application/sdp")])
        return Answer(405, "Method Not Allowed", [("Allow", ALLOW)])

    def _finish(
        self, request: Request, peer: Peer, key: Key | None, answer: Answer, *, spent: bool = False
    ) -> None:
        data = self._reply(request, peer, answer)
        if key is not None:
            self.answered.finish(key, data, self.clock(), spent=spent)

    def _reply(self, request: Request, peer: Peer, answer: Answer) -> bytes | None:
        response = make_response(
            request, answer.status, answer.reason, to_tag=new_tag(), headers=answer.headers
        )
        now = self.clock()
        oc_value = self.loss.oc_value(now)
        if oc_value:
            top = response.first_value("via") or ""
            if top.endswith(OC_LAST):  # as the LB writes it: given its value in place
                response.replace_top_via(top + oc_value)
            elif OC_PARAM in request.top_via.params:
                asked = self.loss.via_params(now)
                response.replace_top_via(_with_overload_control(response.top_via, asked))
        data = response.serialize()
        self._send_answer(data, peer)
        return data

    def _send_answer(self, data: bytes, peer: Peer) -> None:
        """An answer that cannot go (too large for a datagram, its connection gone) is
        lost like one the network loses; a retransmission finds the same."""
        try:
            self.endpoint.send_bytes(data, peer.reply_to)
        except OSError as exc:
            log.debug("answer to %s:%s not sent: %s", peer.host, peer.port, exc)


def _with_overload_control(via: Via, asked: Params) -> str:
    """The client's Via with its ``oc`` parameters set to ``asked`` (RFC 7339 §5.2)."""
    params = {name: value for name, value in via.params.items() if name not in asked}
    params.update(asked)
    return str(via.replace(params=params))


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _flow_token(path: str | None) -> str | None:
    """The LB's flow token: the user part of the first Path URI it inserted."""
    if not path or "@" not in path:
        return None
    first = path.split(",", 1)[0]
    user = first.split("@", 1)[0].rsplit(":", 1)[-1]
    return user or None


def _call_id(request: Request) -> str:
    try:
        return request.call_id
    except ParseError:
        return "?"
