"""The values storage takes and returns: plain frozen dataclasses, no driver types."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from sipfleet.storage.errors import InvalidInput
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget

LbPool = Literal["registrar", "proxy"]
LbState = Literal["active", "draining", "disabled"]
LB_POOLS: tuple[LbPool, ...] = ("registrar", "proxy")
LB_STATES: tuple[LbState, ...] = ("active", "draining", "disabled")
LbHealth = Literal["up", "down", "unknown"]
FLOW_KEY_LEN = 32


def flow_key(instance: str | None, reg_id: int | None) -> str:
    """The ``location.flow_key`` of a binding: '' for a plain one (keyed by its contact),
    a digest of (reg-id, instance) for an RFC 5626 flow. A digest, not the two values:
    an instance may be 255 characters, too long for MariaDB's unique key next to the
    contact, and a fixed size keeps the key within InnoDB's 3,072 bytes."""
    if reg_id is None or instance is None:
        return ""
    digest = hashlib.sha256(f"{reg_id} {instance}".encode()).hexdigest()
    return digest[:FLOW_KEY_LEN]


class AddressOfRecord(Protocol):
    """Anything with a username and a domain (``Aor``, the registrar's own AOR type)."""

    @property
    def username(self) -> str: ...
    @property
    def domain(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Aor:
    username: str
    domain: str

    def __str__(self) -> str:
        return f"{self.username}@{self.domain}"

    @classmethod
    def parse(cls, text: str, field: str = "aor") -> Aor:
        """``user@domain`` (an optional ``sip:`` prefix is dropped); the domain is lower-cased."""
        bare = text.strip()
        if bare.lower().startswith(("sip:", "sips:")):
            bare = bare.split(":", 1)[1]
        username, at, domain = bare.rpartition("@")
        if not at or not username or not domain or any(c in bare for c in " \t<>;"):
            raise InvalidInput(f"{field}: {text!r} is not USER@DOMAIN")
        return cls(username, domain.lower())


@dataclass(frozen=True, slots=True)
class Binding:
    """One row of ``location``: a contact bound to an AOR. Times are unix seconds."""

    id: int
    ruid: str
    username: str
    domain: str
    contact: str
    received: str | None
    path: str | None
    expires: int
    q: float | None
    callid: str
    cseq: int
    last_modified: int
    flags: int
    cflags: int
    user_agent: str | None
    socket: str | None
    methods: str | None
    instance: str | None
    reg_id: int | None
    flow: str | None

    @property
    def aor(self) -> Aor:
        return Aor(self.username, self.domain)

    @property
    def flow_key(self) -> str:
        return flow_key(self.instance, self.reg_id)


@dataclass(frozen=True, slots=True)
class BindingUpdate:
    """One Contact of a REGISTER to store: ``expires`` is absolute; ``expires <= now`` removes.

    Without ``reg_id`` the binding is keyed by (AOR, contact) (RFC 3261 §10.3). With
    ``instance`` and ``reg_id`` it is an RFC 5626 flow, keyed by (AOR, instance, reg-id):
    it replaces that flow's binding whatever its contact, and two flows of one instance
    may share one contact (storage/rules.py).
    """

    contact: str
    expires: int
    callid: str
    cseq: int
    q: float | None = None
    received: str | None = None
    path: str | None = None
    flags: int = 0
    cflags: int = 0
    user_agent: str | None = None
    socket: str | None = None
    methods: str | None = None
    instance: str | None = None
    reg_id: int | None = None
    flow: str | None = None

    @property
    def flow_key(self) -> str:
        return flow_key(self.instance, self.reg_id)


class RouteBinding(NamedTuple):
    """What the proxy reads of an unexpired binding to reach its contact (``lookup_routes``):
    8 of a ``Binding``'s 20 fields, so the database sends and the driver parses fewer
    columns on every call. Same meaning and order rules as ``Binding``. A NamedTuple, not
    a frozen dataclass like the others: made from a row for 3k instructions against 10k,
    and the proxy makes one per binding of every call."""

    id: int  # the later row first among flows registered within one second
    contact: str
    received: str | None
    path: str | None
    q: float | None
    last_modified: int
    instance: str | None
    reg_id: int | None


@dataclass(frozen=True, slots=True)
class LiveFlow:
    """A flow (LB flow token) with at least one unexpired binding: the LB keeps it alive."""

    flow: str
    received: str | None
    socket: str | None
    expires: int


@dataclass(frozen=True, slots=True)
class Subscriber:
    """Digest credentials: HA1 = H(username:realm:password), MD5 and SHA-256 (RFC 8760)."""

    username: str
    domain: str
    ha1: str
    ha1_sha256: str

    @property
    def aor(self) -> Aor:
        return Aor(self.username, self.domain)


@dataclass(frozen=True, slots=True)
class LbTarget:
    id: int
    pool: LbPool
    uri: str
    weight: int
    state: LbState


@dataclass(frozen=True, slots=True)
class LbTargetHealth:
    """One LB's view of one target: ``changed`` when the health last changed, ``checked``
    when the LB last reported (unix seconds; an old one: that LB is gone or stuck)."""

    lb: str
    pool: LbPool
    uri: str
    health: LbHealth
    changed: int
    checked: int


@dataclass(frozen=True, slots=True)
class LcrSnapshot:
    """The four LCR tables as one consistent state, and the ``lcr_version`` they are at."""

    rows: LcrRows
    version: int


@dataclass(frozen=True, slots=True)
class GatewayEntry:
    """A gateway and what it carries (``sipfleet gw list``)."""

    gateway: Gateway
    capabilities: tuple[GatewayCapability, ...]


@dataclass(frozen=True, slots=True)
class RuleEntry:
    """A rule and its trunks (``sipfleet lcr rule list``)."""

    rule: Rule
    targets: tuple[RuleTarget, ...]


EndedBy = Literal["caller", "callee", "max-duration"]
ENDED_BY: tuple[EndedBy, ...] = ("caller", "callee", "max-duration")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One row of ``acc``: a call leg the proxy answered (docs/storage.md, "Accounting").

    The key is (``call_id``, ``from_tag``, ``to_tag``): ``from_tag`` is the caller's (the
    From tag of the initial INVITE), ``to_tag`` the callee's (the To tag of the final
    response). Times are unix milliseconds. ``id`` is assigned by the database (None in a
    record to write). A row written by a BYE before its answer was stored has only the
    key and the end fields.
    """

    call_id: str
    from_tag: str
    to_tag: str
    caller: str | None = None  # the From URI as the caller sent it (even when anonymised)
    caller_shown: str | None = None  # the From URI the callee saw
    callee: str | None = None  # the Request-URI the caller dialled
    destination: str | None = None  # the answering branch's Request-URI; None: proxy answered
    gateway: str | None = None  # that branch's LCR gateway; None: on-net
    status: int | None = None
    reason: str | None = None
    start_ms: int | None = None  # the INVITE arrived
    answer_ms: int | None = None  # the 2xx was sent; None for a failed call
    end_ms: int | None = None  # BYE, or the failure; None while the call lasts
    duration_ms: int | None = None  # end - answer; 0 for a failed call
    ended_by: EndedBy | None = None
    proxy: str | None = None  # the node that wrote the answer or failure
    id: int | None = None


AccountingEvent = Literal["answered", "failed", "ended"]


@dataclass(frozen=True, slots=True)
class AccountingWrite:
    """One call record write, for ``AccountingStore.write``: the record's ``answered`` or
    ``failed`` fields, or for ``ended`` its key, ``end_ms`` and ``ended_by``."""

    event: AccountingEvent
    record: CallRecord


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    """One database a node uses, as ``Storage.health()`` found it: ``name`` its DSN
    without the password; ``lag_s`` how far a replica's applied changes trail its
    primary's (None for the primary, or when the replica does not know: its replication
    stopped); ``error`` why it did not answer."""

    name: str
    role: Literal["primary", "replica"]
    up: bool
    lag_s: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DomainRegistrations:
    """One domain's registrations now: AORs with an unexpired binding, and bindings."""

    domain: str
    aors: int
    bindings: int
