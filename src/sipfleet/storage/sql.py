"""The storage interface over any backend that can run compiled statements.

A backend (``SqliteExecutor``, ``MysqlExecutor``, ``PostgresExecutor``) only runs
statements and the bindings save; everything else is written once here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from sipfleet.storage import rules, schema
from sipfleet.storage.accounting import SqlAccounting
from sipfleet.storage.batch import ReadBatcher, SaveBatcher, SaveOutcome, SaveRequest
from sipfleet.storage.dsn import Dsns, Kind
from sipfleet.storage.errors import (
    InvalidInput,
    SchemaOutdated,
    StorageError,
    StorageUnavailable,
    TooManyContacts,
)
from sipfleet.storage.file_mode import check_private
from sipfleet.storage.lcr import SqlLcr
from sipfleet.storage.model import (
    LB_POOLS,
    LB_STATES,
    AddressOfRecord,
    Binding,
    BindingUpdate,
    DatabaseHealth,
    DomainRegistrations,
    LbPool,
    LbState,
    LbTarget,
    LbTargetHealth,
    LiveFlow,
    RouteBinding,
    Subscriber,
)
from sipfleet.storage.pool import InFlightGate
from sipfleet.storage.statements import (
    Statement,
    Statements,
    Step,
    StepResult,
    compile_for,
)
from sipfleet.storage.timing import timed

SCHEMA_REVISION = "0004"  # the Alembic head this code expects (a test checks they agree)

Row = Sequence[Any]
# Group commit of REGISTER saves (storage/batch.py): up to four batches in flight (more
# than one only when 32 saves wait), at most 64 saves each: 256, database.max_in_flight.
BATCH_LANES = 4
MAX_READ_BATCH = 64  # subscriber reads in one statement at most
MAX_BATCH = 64


class Executor(Protocol):
    """One backend: runs compiled statements on the write DSN or a read DSN."""

    @property
    def dsns(self) -> Dsns: ...
    @property
    def statements(self) -> Statements: ...

    async def fetch(
        self, stmt: Statement, params: Mapping[str, Any], *, replica: bool = False
    ) -> list[Row]: ...

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """On the write DSN; returns the number of rows matched."""
        ...

    async def save(
        self,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome: ...

    async def save_batch(self, requests: Sequence[SaveRequest]) -> list[SaveOutcome]:
        """Saves of one contact each (no reg-id, expires > now), of different AORs, with
        the same ``now`` and ``max_contacts``, in one round trip: their outcomes in order."""
        ...

    async def transaction(
        self,
        steps: Sequence[Step],
        *,
        snapshot: bool = False,
        replica: bool = False,
        extra_time: float = 0.0,
    ) -> list[StepResult] | None:
        """The steps in one transaction on one connection, each step's result in order;
        None when a guard step matched nothing (everything rolled back).

        ``snapshot``: a read-only transaction whose reads all see one consistent state
        (REPEATABLE READ), on a replica when ``replica`` is set. Otherwise a write
        transaction on the primary. Conflicts (deadlocks) rerun the whole transaction.
        ``extra_time`` is added to the query time limit (a large import).
        """
        ...

    async def health(self) -> list[DatabaseHealth]: ...

    async def close(self) -> None: ...


def clock(now: int | None) -> int:
    return int(time.time()) if now is None else now


def binding(row: Row) -> Binding:
    """A row of ``BINDING_COLUMNS``. Every driver returns int for INTEGER/BIGINT and float
    for DOUBLE, so the row maps onto the dataclass as it is."""
    return Binding(*row)


class _Gated:
    """Every query passes the in-flight gate."""

    def __init__(self, executor: Executor, gate: InFlightGate) -> None:
        self.executor = executor
        self.gate = gate
        self.sql = executor.statements

    async def fetch(
        self, stmt: Statement, params: Mapping[str, Any], replica: bool = False
    ) -> list[Row]:
        with self.gate:
            return await self.executor.fetch(stmt, params, replica=replica)

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        with self.gate:
            return await self.executor.execute(stmt, params)

    async def transaction(
        self,
        steps: Sequence[Step],
        *,
        snapshot: bool = False,
        replica: bool = False,
        extra_time: float = 0.0,
    ) -> list[StepResult] | None:
        with self.gate:
            return await self.executor.transaction(
                steps, snapshot=snapshot, replica=replica, extra_time=extra_time
            )


def _batched(updates: Sequence[BindingUpdate], now: int) -> bool:
    """Most REGISTERs: one contact, no reg-id, stored (not removed)."""
    return len(updates) == 1 and updates[0].reg_id is None and updates[0].expires > now


def _aor(aor: AddressOfRecord) -> dict[str, Any]:
    rules.check_aor(aor)
    return {"username": aor.username, "domain": aor.domain}


LookupKey = tuple[str, str, int]  # username, domain, now


class SqlLocation:
    def __init__(
        self, db: _Gated, retry_primary_on_miss: bool, batcher: SaveBatcher | None = None
    ) -> None:
        """``batcher``: saves go in batches, and so do the proxy's lookups (``routes``)."""
        self._db = db
        self._retry = retry_primary_on_miss and db.executor.dsns.has_replica
        self.batcher = batcher
        self.routes: ReadBatcher[LookupKey, list[Row]] | None = None
        if batcher is not None:
            self.routes = ReadBatcher(self._routes_many, max_batch=MAX_READ_BATCH)

    @timed("location.save")
    async def save(
        self,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        *,
        now: int,
        max_contacts: int,
    ) -> list[Binding]:
        rules.check_updates(aor, updates)
        if max_contacts < 1:
            raise InvalidInput(f"max_contacts: {max_contacts} is less than 1")
        with self._db.gate:
            if self.batcher is not None and _batched(updates, now):
                request = SaveRequest(aor, updates[0], now, max_contacts)
                outcome = await self.batcher.save(request)
            else:
                outcome = await self._db.executor.save(aor, updates, now, max_contacts)
        if outcome.refused:
            raise TooManyContacts(f"{aor.username}@{aor.domain}", outcome.after, max_contacts)
        return outcome.bindings

    @timed("location.lookup")
    async def lookup(self, aor: AddressOfRecord, *, now: int | None = None) -> list[Binding]:
        rows = await self._current(self._db.sql.lookup, aor, now)
        return [binding(row) for row in rows]

    # Timed as a lookup: the same read as ``lookup`` with fewer columns; the proxy's reads
    # stay under location.lookup in the metrics.
    @timed("location.lookup")
    async def lookup_routes(
        self, aor: AddressOfRecord, *, now: int | None = None
    ) -> list[RouteBinding]:
        if self.routes is None:
            rows = await self._current(self._db.sql.lookup_routes, aor, now)
        else:
            rules.check_aor(aor)
            with self._db.gate:
                rows = await self.routes.get((aor.username, aor.domain, clock(now)))
        return [RouteBinding(*row) for row in rows]

    async def _routes_many(self, keys: Sequence[LookupKey]) -> list[list[Row]]:
        """Each key's rows of ``lookup_routes``, in one read for all (statements.py
        ``_ROUTES_BY_KEYS``); the keys that found none on a replica are read again, together,
        on the primary when ``retry_primary_on_miss`` is set."""
        found = await self._routes_of(keys, replica=True)
        missed = [i for i, rows in enumerate(found) if not rows] if self._retry else []
        if missed:
            again = await self._routes_of([keys[i] for i in missed], replica=False)
            for i, rows in zip(missed, again, strict=True):
                found[i] = rows
        return found

    async def _routes_of(self, keys: Sequence[LookupKey], *, replica: bool) -> list[list[Row]]:
        sql = self._db.sql
        if len(keys) == 1:  # alone (a light load): the plain statement, without the keys' JSON
            username, domain, now = keys[0]
            params = {"username": username, "domain": domain, "now": now}
            return [await self._db.executor.fetch(sql.lookup_routes, params, replica=replica)]
        rows = await self._db.executor.fetch(
            sql.lookup_routes_many, sql.keys(keys), replica=replica
        )
        found: list[list[Row]] = [[] for _ in keys]
        for row in rows:  # led by its key's position, from 1
            found[row[0] - 1].append(row[1:])
        return found

    async def _current(self, stmt: Statement, aor: AddressOfRecord, now: int | None) -> list[Row]:
        """The AOR's unexpired rows from a replica, or the primary when the replica has
        none and ``retry_primary_on_miss`` is set (a phone that has just registered)."""
        params = {**_aor(aor), "now": clock(now)}
        rows = await self._db.fetch(stmt, params, replica=True)
        if not rows and self._retry:
            rows = await self._db.fetch(stmt, params)
        return rows

    @timed("location.count")
    async def count(self, aor: AddressOfRecord, *, now: int | None = None) -> int:
        params = {**_aor(aor), "now": clock(now)}
        rows = await self._db.fetch(self._db.sql.count, params)
        return int(rows[0][0])

    @timed("location.remove")
    async def remove(self, aor: AddressOfRecord, contact: str) -> int:
        return await self._db.execute(
            self._db.sql.remove_contact, {**_aor(aor), "contact": contact}
        )

    @timed("location.remove_all")
    async def remove_all(
        self, aor: AddressOfRecord, *, callid: str | None = None, cseq: int = 0
    ) -> int:
        if callid is None:
            return await self._db.execute(self._db.sql.remove_all, _aor(aor))
        params = {**_aor(aor), "callid": callid, "cseq": cseq}
        return await self._db.execute(self._db.sql.remove_all_checked, params)

    @timed("location.purge_expired")
    async def purge_expired(self, *, now: int | None = None) -> int:
        return await self._db.execute(self._db.sql.purge_expired, {"now": clock(now)})

    @timed("location.live_flows")
    async def live_flows(self, *, now: int | None = None) -> list[LiveFlow]:
        rows = await self._db.fetch(self._db.sql.live_flows, {"now": clock(now)}, replica=True)
        return [
            LiveFlow(flow, received, socket, int(expires))
            for flow, received, socket, expires in rows
        ]

    @timed("location.all_bindings")
    async def all_bindings(self, *, now: int | None = None) -> list[Binding]:
        rows = await self._db.fetch(self._db.sql.all_bindings, {"now": clock(now)}, replica=True)
        return [binding(row) for row in rows]

    @timed("location.by_domain")
    async def registrations_by_domain(self, *, now: int | None = None) -> list[DomainRegistrations]:
        sql = self._db.sql.registrations_by_domain
        rows = await self._db.fetch(sql, {"now": clock(now)}, replica=True)
        return [DomainRegistrations(str(domain), int(aors), int(n)) for domain, aors, n in rows]


def _account(username: str, domain: str) -> dict[str, Any]:
    rules.check_aor(_Account(username, domain))
    return {"username": username, "domain": domain}


@dataclass(frozen=True, slots=True)
class _Account:
    username: str
    domain: str


def _hex_digest(name: str, value: str, length: int) -> None:
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise InvalidInput(f"{name}: not {length} lower-case hex digits")


class SqlSubscribers:
    def __init__(self, db: _Gated, batched: bool = True) -> None:
        """``batched``: concurrent ``get``s share one read (ReadBatcher)."""
        self._db = db
        self.reads: ReadBatcher[tuple[str, str], Row | None] | None = None
        if batched:
            self.reads = ReadBatcher(self._get_many, max_batch=MAX_READ_BATCH)

    @timed("subscriber.get")
    async def get(self, username: str, domain: str) -> Subscriber | None:
        account = _account(username, domain)
        if self.reads is None:
            rows = await self._db.fetch(self._db.sql.subscriber_get, account, True)
            return Subscriber(*rows[0]) if rows else None
        with self._db.gate:
            row = await self.reads.get((username, domain))
        return Subscriber(*row) if row is not None else None

    async def _get_many(self, keys: Sequence[tuple[str, str]]) -> list[Row | None]:
        """Each key's row (None: not found), one read for every key (statements.py
        ``_SUBSCRIBERS_BY_KEYS``); a row's first two columns are its key, compared exactly."""
        sql = self._db.sql
        rows = await self._db.executor.fetch(sql.subscriber_get_many, sql.keys(keys), replica=True)
        found = {(row[0], row[1]): row for row in rows}
        return [found.get(key) for key in keys]

    @timed("subscriber.add")
    async def add(self, subscriber: Subscriber) -> None:
        params = self._credentials(
            subscriber.username, subscriber.domain, subscriber.ha1, subscriber.ha1_sha256
        )
        await self._db.execute(self._db.sql.subscriber_add, params)

    @timed("subscriber.set_ha1")
    async def set_ha1(self, username: str, domain: str, ha1: str, ha1_sha256: str) -> bool:
        params = self._credentials(username, domain, ha1, ha1_sha256)
        return await self._db.execute(self._db.sql.subscriber_set_ha1, params) > 0

    @timed("subscriber.remove")
    async def remove(self, username: str, domain: str) -> bool:
        return (
            await self._db.execute(self._db.sql.subscriber_remove, _account(username, domain)) > 0
        )

    @timed("subscriber.list_all")
    async def list_all(self, domain: str | None = None) -> list[Subscriber]:
        if domain is None:
            rows = await self._db.fetch(self._db.sql.subscriber_list, {}, True)
        else:
            rows = await self._db.fetch(
                self._db.sql.subscriber_list_domain, {"domain": domain}, True
            )
        return [Subscriber(*row) for row in rows]

    @staticmethod
    def _credentials(username: str, domain: str, ha1: str, ha1_sha256: str) -> dict[str, Any]:
        _hex_digest("ha1", ha1, 32)
        _hex_digest("ha1_sha256", ha1_sha256, 64)
        return {**_account(username, domain), "ha1": ha1, "ha1_sha256": ha1_sha256}


class SqlPreferences:
    def __init__(self, db: _Gated) -> None:
        self._db = db

    @timed("preference.get")
    async def get(self, username: str, domain: str) -> dict[str, str]:
        rows = await self._db.fetch(self._db.sql.preferences_get, _account(username, domain), True)
        return {attribute: value for attribute, value in rows}

    @timed("preference.set")
    async def set(self, username: str, domain: str, attribute: str, value: str) -> None:
        rules.check_text("attribute", attribute, 64, required=True)
        rules.check_text("value", value, schema.SHORT_TEXT_LEN)
        params = {
            **_account(username, domain),
            "attribute": attribute,
            "value": value,
            "now": clock(None),
        }
        await self._db.execute(self._db.sql.preference_set, params)

    @timed("preference.remove")
    async def remove(self, username: str, domain: str, attribute: str) -> bool:
        params = {**_account(username, domain), "attribute": attribute}
        return await self._db.execute(self._db.sql.preference_remove, params) > 0


def _lb_pool(pool: str) -> dict[str, Any]:
    if pool not in LB_POOLS:
        raise InvalidInput(f"pool: {pool!r} is not one of {', '.join(LB_POOLS)}")
    return {"pool": pool}


def _lb_key(pool: str, uri: str) -> dict[str, Any]:
    rules.check_text("uri", uri, schema.SHORT_TEXT_LEN, required=True)
    return {**_lb_pool(pool), "uri": uri}


def _lb_state(state: str) -> str:
    if state not in LB_STATES:
        raise InvalidInput(f"state: {state!r} is not one of {', '.join(LB_STATES)}")
    return state


class SqlLbTargets:
    def __init__(self, db: _Gated) -> None:
        self._db = db

    @timed("lb_target.list_all")
    async def list_all(self, pool: LbPool | None = None) -> list[LbTarget]:
        if pool is None:
            rows = await self._db.fetch(self._db.sql.lb_list, {})
        else:
            rows = await self._db.fetch(self._db.sql.lb_list_pool, _lb_pool(pool))
        return [LbTarget(*row) for row in rows]

    @timed("lb_target.add")
    async def add(
        self, pool: LbPool, uri: str, *, weight: int = 1, state: LbState = "active"
    ) -> LbTarget:
        if not isinstance(weight, int) or not 0 <= weight <= 65535:
            raise InvalidInput(f"weight: {weight!r} is not an integer from 0 to 65535")
        params = {**_lb_key(pool, uri), "weight": weight, "state": _lb_state(state)}
        await self._db.execute(self._db.sql.lb_add, params)
        rows = await self._db.fetch(self._db.sql.lb_get, params)
        return LbTarget(*rows[0])

    @timed("lb_target.remove")
    async def remove(self, pool: LbPool, uri: str) -> bool:
        key = _lb_key(pool, uri)
        await self._db.execute(self._db.sql.lb_health_remove, key)
        return await self._db.execute(self._db.sql.lb_remove, key) > 0

    @timed("lb_target.set_state")
    async def set_state(self, pool: LbPool, uri: str, state: LbState) -> bool:
        params = {**_lb_key(pool, uri), "state": _lb_state(state)}
        return await self._db.execute(self._db.sql.lb_set_state, params) > 0

    @timed("lb_target.report_health")
    async def report_health(self, lb: str, reports: Sequence[LbTargetHealth]) -> None:
        rules.check_text("lb", lb, 64, required=True)
        checked = max((report.checked for report in reports), default=clock(None))
        rows = [
            {
                **_lb_key(r.pool, r.uri),
                "lb": lb,
                "health": r.health,
                "changed": r.changed,
                "checked": checked,
            }
            for r in reports
        ]
        steps = [Step(self._db.sql.lb_health_set, rows)] if rows else []
        steps.append(Step(self._db.sql.lb_health_prune, [{"lb": lb, "checked": checked}]))
        await self._db.transaction(steps)

    @timed("lb_target.list_health")
    async def list_health(self) -> list[LbTargetHealth]:
        rows = await self._db.fetch(self._db.sql.lb_health_list, {})
        return [
            LbTargetHealth(lb, pool, uri, health, int(changed), int(checked))
            for lb, pool, uri, health, changed, checked in rows
        ]


class SqlStorage:
    """The ``Storage`` of every backend."""

    def __init__(
        self,
        executor: Executor,
        *,
        retry_primary_on_miss: bool = True,
        max_in_flight: int = 256,
        batch_lanes: int = BATCH_LANES,
        max_batch: int = MAX_BATCH,
    ) -> None:
        """``batch_lanes``: batches of saves in flight at once (0: no batching, every save
        is its own round trip); ``max_batch``: saves per batch at most."""
        self._executor = executor
        self._gate = InFlightGate(max_in_flight)
        db = _Gated(executor, self._gate)
        batcher = (
            SaveBatcher(executor.save_batch, lanes=batch_lanes, max_batch=max_batch)
            if batch_lanes > 0
            else None
        )
        self._location = SqlLocation(db, retry_primary_on_miss, batcher)
        self._subscribers = SqlSubscribers(db, batched=batch_lanes > 0)
        self._preferences = SqlPreferences(db)
        self._lb_targets = SqlLbTargets(db)
        self._lcr = SqlLcr(db, executor.dsns.write.kind)
        self._accounting = SqlAccounting(db, executor.dsns.write.kind)
        version = sa.table(schema.VERSION_TABLE, sa.column("version_num"))
        self._version_query = compile_for(
            sa.select(version.c.version_num), executor.statements.dialect
        )

    @property
    def dsns(self) -> Dsns:
        return self._executor.dsns

    @property
    def kind(self) -> Kind:
        return self._executor.dsns.write.kind

    @property
    def location(self) -> SqlLocation:
        return self._location

    @property
    def subscribers(self) -> SqlSubscribers:
        return self._subscribers

    @property
    def preferences(self) -> SqlPreferences:
        return self._preferences

    @property
    def lb_targets(self) -> SqlLbTargets:
        return self._lb_targets

    @property
    def lcr(self) -> SqlLcr:
        return self._lcr

    @property
    def accounting(self) -> SqlAccounting:
        return self._accounting

    @property
    def in_flight(self) -> int:
        return self._gate.count

    async def check_schema(self) -> None:
        if self.dsns.write.path is not None:
            check_private(self.dsns.write.path)
        try:
            with self._gate:
                rows = await self._executor.fetch(self._version_query, {})
        except StorageUnavailable:
            path = self.dsns.write.path
            if path is None or path.exists():
                raise
            rows = []  # no SQLite file yet: `db upgrade` creates it
        except StorageError:
            rows = []  # no version table
        found = rows[0][0] if rows else None
        if found != SCHEMA_REVISION:
            state = f"at revision {found}" if found else "not initialised"
            raise SchemaOutdated(
                f"database {self.dsns.write} is {state}, this sipfleet needs "
                f"{SCHEMA_REVISION}: run `sipfleet db upgrade`"
            )

    async def health(self) -> list[DatabaseHealth]:
        return await self._executor.health()

    async def close(self) -> None:
        await self._executor.close()
