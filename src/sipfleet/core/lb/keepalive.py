"""NAT keepalives: the table of registered flows and the wheel that spreads their pings.

Not a location cache: per flow only what a ping needs (the flow token, which names the
client's address, connection and worker) and how long each registration through it
lives. The LB learns it from the REGISTER 2xx responses passing through it (``learned``):
the REGISTER carried the token and a digest of each Contact in our Via, and the 2xx
lists every binding of the AOR with its lifetime, so the LB knows which of them came
over this flow without remembering the request. expires=0 or a binding missing from the
2xx ends that registration; the flow is dropped when its last registration ends or
expires. At start-up the table is rebuilt from one query of ``location`` (``restore``).

The wheel has one slot per ``tick``; flows are placed round robin as they arrive, and
each tick pings one slot, so N flows cost N/interval pings a second, evenly. A flow whose
OPTIONS was not answered by its next turn counts as a miss (logged once when it starts
failing, and when it answers again). Sans-IO: the shell calls ``due`` every tick, sends,
and reports answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sipfleet.sip import Response, parse_via
from sipfleet.sip.flow import Flow, FlowTokens

DEFAULT_LIFETIME = 3600  # a 2xx Contact without expires, in a response without Expires
RESTORED = ""  # the registration key of flows rebuilt from the database (AOR unknown)
KEEPALIVE_BRANCH = "z9hG4bK-lbk-"


def contact_digest(uri_text: str) -> str:
    """A short digest of a Contact URI as written (8 hex digits)."""
    return hashlib.blake2b(uri_text.encode(), digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True)
class Learned:
    token: str
    flow: Flow
    aor: str
    lifetime: int  # seconds from now; 0: the registration ended


def learned(response: Response, our_via: str, tokens: FlowTokens) -> Learned | None:
    """What a REGISTER 2xx says about the flow named in our Via (None: nothing to learn:
    not a 2xx to a REGISTER of ours, or a token that does not verify)."""
    if not 200 <= response.status < 300 or response.cseq.method != "REGISTER":
        return None
    params = parse_via(our_via).params
    token = params.get("lbf")
    flow = tokens.decode(token) if token else None
    if token is None or flow is None:
        return None
    digests = set((params.get("lbc") or "").split("."))
    lifetime = 0
    for contact in response.contacts:
        if contact_digest(contact.uri_text) in digests:
            expires = contact.expires
            if expires is None:
                expires = response.expires if response.expires is not None else DEFAULT_LIFETIME
            lifetime = max(lifetime, expires)
    return Learned(token, flow, response.to.uri_text, lifetime)


@dataclass(slots=True, eq=False)
class KeptFlow:
    id: int
    token: str
    flow: Flow
    slot: int
    registrations: dict[str, float] = field(default_factory=dict)  # AOR -> unix expiry
    awaiting: bool = False  # an OPTIONS ping is unanswered
    failing: bool = False
    misses: int = 0

    @property
    def expires(self) -> float:
        return max(self.registrations.values(), default=0.0)


@dataclass(slots=True)
class KeepaliveStats:
    flows: int = 0
    pings_sent: int = 0
    answers: int = 0
    misses: int = 0  # pings not answered by the flow's next turn
    failing: int = 0  # flows whose last ping went unanswered, now
    expired: int = 0
    ended: int = 0  # last registration removed (expires=0, or gone from the 2xx)
    lost: int = 0  # TCP connection gone

    def counters(self) -> dict[str, int]:
        """Each count by its name (written out: a compiled class has no ``__slots__``)."""
        return {
            "flows": self.flows,
            "pings_sent": self.pings_sent,
            "answers": self.answers,
            "misses": self.misses,
            "failing": self.failing,
            "expired": self.expired,
            "ended": self.ended,
            "lost": self.lost,
        }


@dataclass(frozen=True, slots=True)
class Round:
    """One tick's work: ping these; these expired; these just started failing."""

    ping: list[KeptFlow]
    expired: list[KeptFlow]
    failing: list[KeptFlow]


class KeepaliveTable:
    def __init__(self, interval: float, *, tick: float = 0.1, answers: bool = True) -> None:
        """``answers``: the pings are answered (OPTIONS over UDP) and misses count."""
        self.slots = max(1, round(interval / tick))
        self.tick = interval / self.slots
        self.answers = answers
        self.stats = KeepaliveStats()
        self.by_token: dict[str, KeptFlow] = {}
        self.by_id: dict[int, KeptFlow] = {}
        self._wheel: list[dict[int, KeptFlow]] = [{} for _ in range(self.slots)]
        self._next_id = 0
        self._origin: float | None = None
        self._ticks_done = 0

    def __len__(self) -> int:
        return len(self.by_token)

    # -- what the LB learns --------------------------------------------------------------
    def learn(self, news: Learned, wall: float) -> KeptFlow | None:
        """A 2xx said ``news.aor`` is registered over the flow for ``news.lifetime``
        seconds from ``wall`` (0: no longer). Returns the flow when that ended it."""
        kept = self.by_token.get(news.token)
        if news.lifetime <= 0:
            return self._end(kept, news.aor) if kept is not None else None
        if kept is None:
            kept = self._add(news.token, news.flow)
        kept.registrations.pop(RESTORED, None)  # fresher than what the database said
        kept.registrations[news.aor] = wall + news.lifetime
        return None

    def restore(self, token: str, flow: Flow, expires_at: float) -> None:
        """A flow found in the database at start-up."""
        kept = self.by_token.get(token) or self._add(token, flow)
        kept.registrations[RESTORED] = max(expires_at, kept.registrations.get(RESTORED, 0.0))

    def _add(self, token: str, flow: Flow) -> KeptFlow:
        self._next_id += 1
        kept = KeptFlow(self._next_id, token, flow, self._next_id % self.slots)
        self.by_token[token] = kept
        self.by_id[kept.id] = kept
        self._wheel[kept.slot][kept.id] = kept
        self.stats.flows = len(self.by_token)
        return kept

    def _end(self, kept: KeptFlow, aor: str) -> KeptFlow | None:
        kept.registrations.pop(aor, None)
        kept.registrations.pop(RESTORED, None)
        if kept.registrations:
            return None
        self.remove(kept)
        self.stats.ended += 1
        return kept

    def remove(self, kept: KeptFlow) -> None:
        if self.by_token.pop(kept.token, None) is None:
            return
        del self.by_id[kept.id]
        self._wheel[kept.slot].pop(kept.id, None)
        if kept.failing:
            self.stats.failing -= 1
        self.stats.flows = len(self.by_token)

    # -- the wheel ------------------------------------------------------------------------
    def due(self, now: float, wall: float) -> Round:
        """The slots whose time has come by ``now`` (monotonic); ``wall``: unix seconds,
        for expiry. A late caller catches up, at most one whole turn."""
        if self._origin is None:
            self._origin = now
        target = int((now - self._origin) / self.tick + 1e-6) + 1  # float noise: not late
        todo = min(target - self._ticks_done, self.slots)
        if todo <= 0:
            return Round([], [], [])
        first = target - todo
        self._ticks_done = target
        ping: list[KeptFlow] = []
        expired: list[KeptFlow] = []
        failing: list[KeptFlow] = []
        for tick in range(first, target):
            for kept in list(self._wheel[tick % self.slots].values()):
                self._visit(kept, wall, ping, expired, failing)
        return Round(ping, expired, failing)

    def _visit(
        self,
        kept: KeptFlow,
        wall: float,
        ping: list[KeptFlow],
        expired: list[KeptFlow],
        failing: list[KeptFlow],
    ) -> None:
        registrations = kept.registrations
        if min(registrations.values()) <= wall:
            for aor in [a for a, at in registrations.items() if at <= wall]:
                del registrations[aor]
            if not registrations:
                self.remove(kept)
                self.stats.expired += 1
                expired.append(kept)
                return
        if kept.awaiting:
            kept.misses += 1
            self.stats.misses += 1
            if not kept.failing:
                kept.failing = True
                self.stats.failing += 1
                failing.append(kept)
        kept.awaiting = self.answers and kept.flow.transport == "udp"
        ping.append(kept)

    def answered(self, flow_id: int) -> KeptFlow | None:
        """An answer to a ping; returns the flow when it had been failing (recovered)."""
        kept = self.by_id.get(flow_id)
        if kept is None:
            return None
        self.stats.answers += 1
        kept.awaiting = False
        kept.misses = 0
        if kept.failing:
            kept.failing = False
            self.stats.failing -= 1
            return kept
        return None


class OptionsPing:
    """OPTIONS keepalive requests, built from a template (no parser, no builder): a ping
    costs one string format. The branch names the worker and the flow, so the answer
    finds its flow without a table of outstanding pings."""

    def __init__(self, worker: int, call_id_prefix: str, tag: str) -> None:
        self._worker = worker
        self._call_id_prefix = call_id_prefix
        self._tag = tag
        self._heads: dict[str, str] = {}
        self._seq = 0

    def _head(self, sent_by: str) -> str:
        head = self._heads.get(sent_by)
        if head is None:
            branch = f"{KEEPALIVE_BRANCH}{self._worker}-{{id}}-{{seq}}"
            head = self._heads[sent_by] = (
                "OPTIONS sip:{target} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {sent_by};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:keepalive@{sent_by}>;tag={self._tag}\r\n"
                "To: <sip:{target}>\r\n"
                f"Call-ID: {self._call_id_prefix}-{{id}}-{{seq}}\r\n"
                "CSeq: {seq} OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
        return head

    def build(self, kept: KeptFlow, sent_by: str) -> bytes:
        """A ping to ``kept``'s address; ``sent_by``: our Via (the external side)."""
        self._seq += 1
        flow = kept.flow
        target = f"[{flow.host}]:{flow.port}" if ":" in flow.host else f"{flow.host}:{flow.port}"
        return self._head(sent_by).format(target=target, id=kept.id, seq=self._seq).encode()


def ping_answered(via: str) -> tuple[int, int] | None:
    """(worker, flow id) from the top Via of an answer to one of our pings."""
    at = via.find(KEEPALIVE_BRANCH)
    if at < 0:
        return None
    parts = via[at + len(KEEPALIVE_BRANCH) :].split(";", 1)[0].split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])
