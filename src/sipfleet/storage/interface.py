"""The storage interface: what registrar, proxy, LB and CLI may ask of the database.

Every method may raise ``StorageUnavailable`` (database unreachable or too slow; nothing
half-written) or ``StorageOverloaded`` (more than ``database.max_in_flight`` queries in
flight). ``now`` is unix seconds; left out, the local clock is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sipfleet.storage.dsn import Dsns
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget
from sipfleet.storage.model import (
    AccountingWrite,
    AddressOfRecord,
    Binding,
    BindingUpdate,
    CallRecord,
    DatabaseHealth,
    DomainRegistrations,
    EndedBy,
    GatewayEntry,
    LbPool,
    LbState,
    LbTarget,
    LbTargetHealth,
    LcrSnapshot,
    LiveFlow,
    RouteBinding,
    RuleEntry,
    Subscriber,
)


class LocationStore(Protocol):
    async def save(
        self,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        *,
        now: int,
        max_contacts: int,
    ) -> list[Binding]:
        """Apply one REGISTER's contacts (see ``storage.rules``) and return every unexpired
        binding of the AOR afterwards. One database round trip where the backend allows.

        Raises ``TooManyContacts`` (nothing written) and ``InvalidInput`` (field named).
        """
        ...

    async def lookup(self, aor: AddressOfRecord, *, now: int | None = None) -> list[Binding]:
        """Unexpired bindings, best q first; from a replica, retried on the primary when the
        replica has none and ``database.retry_primary_on_miss`` is set."""
        ...

    async def lookup_routes(
        self, aor: AddressOfRecord, *, now: int | None = None
    ) -> list[RouteBinding]:
        """``lookup`` for routing a call: the same bindings in the same order, with only
        the fields the proxy reads (``RouteBinding``)."""
        ...

    async def count(self, aor: AddressOfRecord, *, now: int | None = None) -> int: ...

    async def remove(self, aor: AddressOfRecord, contact: str) -> int:
        """Remove one binding by contact URI; returns how many were removed (0 or 1)."""
        ...

    async def remove_all(
        self, aor: AddressOfRecord, *, callid: str | None = None, cseq: int = 0
    ) -> int:
        """``Contact: *``: with ``callid``, bindings of that Call-ID and a CSeq >= ``cseq``
        survive (RFC 3261 §10.3 step 6); without, every binding goes (operator removal)."""
        ...

    async def purge_expired(self, *, now: int | None = None) -> int:
        """Delete expired bindings: one statement, safe on several registrars at once."""
        ...

    async def live_flows(self, *, now: int | None = None) -> list[LiveFlow]:
        """Every flow token with an unexpired binding: the LB's keepalive table at start."""
        ...

    async def all_bindings(self, *, now: int | None = None) -> list[Binding]:
        """Every unexpired binding (the CLI's ``location show``)."""
        ...

    async def registrations_by_domain(self, *, now: int | None = None) -> list[DomainRegistrations]:
        """Per domain, AORs with an unexpired binding and those bindings, by domain: one
        GROUP BY, on a replica where there is one (the metrics)."""
        ...


class SubscriberStore(Protocol):
    async def get(self, username: str, domain: str) -> Subscriber | None: ...

    async def add(self, subscriber: Subscriber) -> None:
        """Raises ``AlreadyExists`` when the account is there already."""
        ...

    async def set_ha1(self, username: str, domain: str, ha1: str, ha1_sha256: str) -> bool:
        """New credentials; False when there is no such subscriber."""
        ...

    async def remove(self, username: str, domain: str) -> bool: ...

    async def list_all(self, domain: str | None = None) -> list[Subscriber]: ...


class PreferenceStore(Protocol):
    async def get(self, username: str, domain: str) -> dict[str, str]:
        """Every attribute of the user (e.g. ``lcr_cap``, ``clir``)."""
        ...

    async def set(self, username: str, domain: str, attribute: str, value: str) -> None: ...

    async def remove(self, username: str, domain: str, attribute: str) -> bool: ...


class LbTargetStore(Protocol):
    async def list_all(self, pool: LbPool | None = None) -> list[LbTarget]: ...

    async def add(
        self, pool: LbPool, uri: str, *, weight: int = 1, state: LbState = "active"
    ) -> LbTarget:
        """Raises ``AlreadyExists`` for a (pool, uri) that is there already."""
        ...

    async def remove(self, pool: LbPool, uri: str) -> bool:
        """Remove a target (and every LB's health row of it)."""
        ...

    async def set_state(self, pool: LbPool, uri: str, state: LbState) -> bool: ...

    async def report_health(self, lb: str, reports: Sequence[LbTargetHealth]) -> None:
        """Store LB ``lb``'s view of its targets; its rows of other targets go."""
        ...

    async def list_health(self) -> list[LbTargetHealth]:
        """Every LB's view of every target (`sipfleet lb target list`)."""
        ...


class LcrStore(Protocol):
    """Least-cost routing (DESIGN §3): the tables ``lcr_gw``, ``lcr_gw_cap``, ``lcr_rule``,
    ``lcr_rule_target`` and the ``lcr_version`` counter.

    Every write is one transaction that checks *all* the rows it leaves behind
    (``lcr_rows.check_rows`` and the column sizes) and raises ``InvalidLcr`` naming each
    entry and field at fault, writing nothing. Every write moves the version on by one
    and returns the new version; proxies reload when it moved. Concurrent writers never
    lose each other's changes (compare-and-set on the version, then recomputed).
    """

    async def version(self, *, replica: bool = True) -> int:
        """The current version (0 before the first write): one small query."""
        ...

    async def load(self, *, replica: bool = True) -> LcrSnapshot:
        """Every row and the version they are at, read in one consistent snapshot."""
        ...

    async def list_gateways(self) -> list[GatewayEntry]: ...

    async def list_rules(self) -> list[RuleEntry]: ...

    async def bump_version(self) -> int:
        """Move the version on without changing any row (`sipfleet lcr reload`)."""
        ...

    async def replace_all(self, rows: LcrRows) -> int:
        """Make the tables hold exactly ``rows`` (`sipfleet lcr import`)."""
        ...

    async def merge(self, rows: LcrRows) -> int:
        """Lay ``rows`` over the current ones: gateways replace those of the same name
        (with their capabilities), rules those of the same id (with their targets)."""
        ...

    async def add_gateway(self, gateway: Gateway, capabilities: Sequence[GatewayCapability]) -> int:
        """Raises ``AlreadyExists`` for a name that is taken."""
        ...

    async def remove_gateway(self, name: str, *, with_targets: bool = False) -> int | None:
        """None: no such gateway. One that rules still use is refused (``InvalidLcr``)
        unless ``with_targets``, which removes those targets too."""
        ...

    async def set_gateway_enabled(self, name: str, enabled: bool) -> int | None:
        """None: no such gateway."""
        ...

    async def add_rule(
        self, rule: Rule, targets: Sequence[RuleTarget], *, assign_id: bool = False
    ) -> Rule:
        """Add a rule and its targets; ``assign_id``: the next free id instead of
        ``rule.id``. Raises ``AlreadyExists`` for an id that is taken."""
        ...

    async def remove_rule(self, rule_id: int) -> int | None:
        """None: no such rule. Its targets go with it."""
        ...

    async def add_target(self, target: RuleTarget) -> int: ...

    async def remove_target(self, rule_id: int, gw: str, capability: int | None = None) -> int:
        """How many targets went (every one of ``gw`` in the rule, or the one of
        ``capability``); 0 writes nothing."""
        ...


class AccountingStore(Protocol):
    """Call records (``acc``, docs/storage.md "Accounting"): one row per call leg the proxy
    answered, keyed by (Call-ID, caller's From tag, callee's To tag). Times are unix
    milliseconds. Every write is one statement, and the row comes out right whichever
    proxy writes which event, in whichever order. Text too long for its column is cut to
    size, never refused."""

    async def answered(self, record: CallRecord) -> None:
        """The 2xx went upstream: insert the record (its end fields are ignored). A row of
        the key there already (its BYE was written first) gets the answer fields and
        ``duration_ms = end_ms - answer_ms``. ``InvalidInput`` without status/answer_ms."""
        ...

    async def failed(self, record: CallRecord) -> None:
        """The final answer was >= 300: insert the record with ``end_ms`` (the failure
        time), ``duration_ms`` 0, no answer. The same key again changes nothing."""
        ...

    async def ended(
        self, call_id: str, caller_tag: str, callee_tag: str, *, end_ms: int, ended_by: EndedBy
    ) -> bool:
        """A BYE passed: close the call (end, ended_by, duration) if it is still open; the
        first BYE wins. No row yet: insert the key and the end, for ``answered`` to
        complete. Whether a row was created or changed."""
        ...

    async def write(self, writes: Sequence[AccountingWrite]) -> None:
        """Several ``answered``/``failed``/``ended`` writes in one transaction (one round
        trip where the driver allows: one multi-row upsert per event), each leaving the
        row as it would alone; of one key, ``answered`` and ``failed`` go before
        ``ended``. A write the database refuses fails them all (nothing is written):
        write them one by one to find it."""
        ...

    async def close_overdue(self, *, now_ms: int, max_duration_ms: int) -> int:
        """Calls answered more than ``max_duration_ms`` ago and still open end at
        ``answer_ms + max_duration_ms`` (ended_by ``max-duration``): one statement, safe
        on several proxies at once. How many it closed."""
        ...

    async def list(
        self,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        call_id: str | None = None,
        limit: int | None = None,
    ) -> list[CallRecord]:
        """Records that started in [since_ms, until_ms), by start then id; rows without a
        start (a BYE written before the answer) last, and only when no time is given.
        Read from the primary (billing wants every record written)."""
        ...


class Storage(Protocol):
    """One node's view of the cluster database; share one per process."""

    @property
    def dsns(self) -> Dsns: ...
    @property
    def location(self) -> LocationStore: ...
    @property
    def subscribers(self) -> SubscriberStore: ...
    @property
    def preferences(self) -> PreferenceStore: ...
    @property
    def lb_targets(self) -> LbTargetStore: ...
    @property
    def lcr(self) -> LcrStore: ...
    @property
    def accounting(self) -> AccountingStore: ...
    @property
    def in_flight(self) -> int:
        """Queries running or waiting for a connection now."""
        ...

    async def check_schema(self) -> None:
        """Raises ``SchemaOutdated`` unless the write database is at the current revision."""
        ...

    async def health(self) -> list[DatabaseHealth]:
        """The write database, then each read replica: whether it answers (within the
        connect time limit) and a replica's lag in seconds. Never raises for a database
        that is down: that is in the answer."""
        ...

    async def close(self) -> None: ...
