"""Accounting (``acc``, docs/storage.md "Accounting"): the proxies' call records in SQL.

A call leg is written by whichever proxy sees each event: ``answered`` (or ``failed``) by
the proxy that sent the final answer, ``ended`` by the one the BYE passed, which may be
another one, and sooner. So every write is one upsert on the key (Call-ID, caller's tag,
callee's tag) that leaves the row right in whichever order the writes arrive, and a
write repeated (a retransmission, two proxies closing the same overdue call) changes
nothing. Each operation is one statement, one round trip; ``write`` sends several in one
transaction (the proxy's writer batches what waits in its backlog), one multi-row upsert
per kind where the driver allows.

Text is cut to its column's size instead of refused: a call record must not be lost
because a URI is long. The cut is the same for every write, so the key still matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from sipfleet.storage.dsn import Kind
from sipfleet.storage.errors import InvalidInput
from sipfleet.storage.model import ENDED_BY, AccountingWrite, CallRecord, EndedBy
from sipfleet.storage.schema import acc
from sipfleet.storage.statements import Statement, Step, StepResult, compile_for, dialect_for
from sipfleet.storage.timing import timed

KEY = ("call_id", "from_tag", "to_tag")
# What `answered` writes; the end fields are ``ended``'s (or ``close_overdue``'s).
ANSWER_FIELDS = (
    "caller",
    "caller_shown",
    "callee",
    "destination",
    "gateway",
    "status",
    "reason",
    "start_ms",
    "answer_ms",
    "proxy",
)
# What `failed` writes: the failure time is its end (no answer, duration 0).
FAILURE_FIELDS = (*(name for name in ANSWER_FIELDS if name != "answer_ms"), "end_ms")
_COLUMNS = tuple(acc.c[field.name] for field in fields(CallRecord))
_TEXT_SIZES = {
    column.name: column.type.length
    for column in acc.c
    if isinstance(column.type, sa.String) and column.type.length
}


class _Database(Protocol):
    """What the store needs of ``sql._Gated``: queries through the in-flight gate."""

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int: ...

    async def fetch(
        self, stmt: Statement, params: Mapping[str, Any], replica: bool = False
    ) -> list[Sequence[Any]]: ...

    async def transaction(self, steps: Sequence[Step]) -> list[StepResult] | None: ...


def _p(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=acc.c[name].type)


def _values(names: Sequence[str]) -> dict[str, Any]:
    return {name: _p(name) for name in names}


def _this_call() -> sa.ColumnElement[bool]:
    return sa.and_(*(acc.c[name] == _p(name) for name in KEY))


def _insert(kind: Kind) -> Any:
    """The dialect's INSERT, which knows its way of handling a duplicate key."""
    if kind == "mysql":
        return mysql.insert(acc)
    return (sqlite.insert if kind == "sqlite" else postgresql.insert)(acc)


def _answered(kind: Kind) -> Any:
    """Insert the answered call; a row there already (the BYE came first, to another
    proxy) gets the answer fields and its duration, keeping its end fields."""
    insert = _insert(kind).values(_values((*KEY, *ANSWER_FIELDS)))
    new = insert.inserted if kind == "mysql" else insert.excluded
    updates = {name: new[name] for name in ANSWER_FIELDS}
    updates["duration_ms"] = acc.c.end_ms - new.answer_ms
    if kind == "mysql":
        return insert.on_duplicate_key_update(updates)
    return insert.on_conflict_do_update(index_elements=KEY, set_=updates)


def _failed(kind: Kind) -> Any:
    """Insert the failed call; the same failure written again changes nothing. (Its
    duration, 0, is a parameter: asyncmy sends a batch of rows as one multi-row INSERT
    only when every value is one.)"""
    insert = _insert(kind).values(_values((*KEY, *FAILURE_FIELDS, "duration_ms")))
    if kind == "mysql":
        return insert.on_duplicate_key_update(id=acc.c.id)
    return insert.on_conflict_do_nothing(index_elements=KEY)


_ENDED_FIELDS = (*KEY, "end_ms", "ended_by")


def _ended(kind: Kind) -> Any:
    """Close the call if it is open; no row yet (the answer is still being written
    elsewhere): insert the key and the end, for ``answered`` to complete. The first BYE
    wins: a closed row is left as it is, and the statement then counts no row."""
    if kind == "mysql":
        return _ended_mysql()
    insert = _insert(kind).values(_values(_ENDED_FIELDS))
    new = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=KEY,
        set_={
            "end_ms": new.end_ms,
            "ended_by": new.ended_by,
            "duration_ms": new.end_ms - acc.c.answer_ms,
        },
        where=acc.c.end_ms.is_(None),
    )


def _ended_mysql() -> Any:
    """MariaDB's ON DUPLICATE KEY UPDATE takes no WHERE, and with FOUND_ROWS (which the
    connections use) an update to the same values counts 1, like an insert. So a closed
    row is excluded before the insert (no row selected: 0), and the update is still
    conditional on the row it holds locked, for two BYEs racing each other: the second
    changes nothing (though it may count 1)."""
    closed = sa.exists().where(_this_call(), acc.c.end_ms.is_not(None))
    source = sa.select(*(_p(name) for name in _ENDED_FIELDS)).where(~closed)
    return _close_if_open(mysql.insert(acc).from_select(list(_ENDED_FIELDS), source))


def _ended_rows(kind: Kind) -> Any:
    """``ended`` for a batch, which counts no rows: on MariaDB without the exclusion of a
    closed row (the conditional update alone leaves it as it is), so that asyncmy sends
    the batch as one multi-row INSERT."""
    if kind == "mysql":
        return _close_if_open(mysql.insert(acc).values(_values(_ENDED_FIELDS)))
    return _ended(kind)


def _close_if_open(insert: Any) -> Any:
    """A MariaDB insert of the end whose duplicate key sets the end only on an open row.
    Assignments run left to right and see the columns already assigned: ``end_ms`` goes
    last."""
    new = insert.inserted
    still_open = acc.c.end_ms.is_(None)

    def when_open(value: Any, column: sa.Column[Any]) -> Any:
        return sa.func.IF(still_open, value, column)

    return insert.on_duplicate_key_update(
        [
            ("ended_by", when_open(new.ended_by, acc.c.ended_by)),
            ("duration_ms", when_open(new.end_ms - acc.c.answer_ms, acc.c.duration_ms)),
            ("end_ms", when_open(new.end_ms, acc.c.end_ms)),
        ]
    )


def _close_overdue() -> sa.Update:
    """Every call answered before the cutoff and still open ends at its maximum
    duration. A row another proxy closed meanwhile no longer matches: safe on several."""
    limit = _p("duration_ms")
    return (
        sa.update(acc)
        .where(
            acc.c.end_ms.is_(None), acc.c.answer_ms < sa.bindparam("cutoff", type_=sa.BigInteger)
        )
        .values(end_ms=acc.c.answer_ms + limit, duration_ms=limit, ended_by=_p("ended_by"))
    )


class AccountingStatements:
    """The accounting statements of one dialect, compiled once; ``listing`` per filter."""

    def __init__(self, kind: Kind) -> None:
        self.dialect = dialect_for(kind)
        self.answered = self._compile(_answered(kind))
        self.failed = self._compile(_failed(kind))
        self.ended = self._compile(_ended(kind))
        self.ended_rows = self._compile(_ended_rows(kind))
        self.close_overdue = self._compile(_close_overdue())
        self._listings: dict[tuple[bool, ...], Statement] = {}

    def _compile(self, element: Any) -> Statement:
        return compile_for(element, self.dialect)

    def listing(self, since: bool, until: bool, call_id: bool, limit: bool) -> Statement:
        """The list statement of these filters (at most 16 kinds, each compiled once)."""
        key = (since, until, call_id, limit)
        if key not in self._listings:
            self._listings[key] = self._compile(_listing(since, until, call_id, limit))
        return self._listings[key]


def _listing(since: bool, until: bool, call_id: bool, limit: bool) -> sa.Select[Any]:
    query = sa.select(*_COLUMNS)
    if since:
        query = query.where(acc.c.start_ms >= sa.bindparam("since", type_=sa.BigInteger))
    if until:
        query = query.where(acc.c.start_ms < sa.bindparam("until", type_=sa.BigInteger))
    if call_id:
        query = query.where(acc.c.call_id == _p("call_id"))
    # By start; a row a BYE wrote before its answer (no start yet) last, in every
    # dialect (they differ on where NULLs sort).
    query = query.order_by(acc.c.start_ms.is_(None), acc.c.start_ms, acc.c.id)
    if not limit:
        return query
    # An explicit offset (always 0): SQLite's compiler would add one of its own, as a
    # parameter this statement could not name.
    count = sa.bindparam("limit", type_=sa.Integer)
    return query.limit(count).offset(sa.bindparam("offset", type_=sa.Integer))


def fit(name: str, value: str | None) -> str | None:
    """The text as the column can hold it: cut to its size, NUL characters dropped
    (PostgreSQL refuses them in text)."""
    if value is None:
        return None
    return value.replace("\x00", "")[: _TEXT_SIZES[name]]


def _params(record: CallRecord, names: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in names:
        value = getattr(record, name)
        params[name] = fit(name, value) if name in _TEXT_SIZES else value
    return params


def _answered_params(record: CallRecord) -> dict[str, Any]:
    _require(record, "answered", "status", "answer_ms")
    return _params(record, (*KEY, *ANSWER_FIELDS))


def _failed_params(record: CallRecord) -> dict[str, Any]:
    _require(record, "failed", "status", "end_ms")
    return {**_params(record, (*KEY, *FAILURE_FIELDS)), "duration_ms": 0}


def _ended_params(record: CallRecord) -> dict[str, Any]:
    _require(record, "ended", "end_ms", "ended_by")
    return _params(replace(record, ended_by=_ended_by(record.ended_by or "")), _ENDED_FIELDS)


_PARAMS = {"answered": _answered_params, "failed": _failed_params, "ended": _ended_params}


def _require(record: CallRecord, operation: str, *names: str) -> None:
    for name in (*KEY, *names):
        if getattr(record, name) is None:
            raise InvalidInput(f"{name}: {operation} needs it ({record.call_id!r})")


def _ended_by(value: str) -> EndedBy:
    for known in ENDED_BY:
        if value == known:
            return known
    raise InvalidInput(f"ended_by: {value!r} is not one of {', '.join(ENDED_BY)}")


class SqlAccounting:
    """The ``AccountingStore`` of every backend (see ``interface.AccountingStore``)."""

    def __init__(self, db: _Database, kind: Kind) -> None:
        self._db = db
        self.sql = AccountingStatements(kind)

    @timed("acc.answered")
    async def answered(self, record: CallRecord) -> None:
        await self._db.execute(self.sql.answered, _answered_params(record))

    @timed("acc.failed")
    async def failed(self, record: CallRecord) -> None:
        await self._db.execute(self.sql.failed, _failed_params(record))

    @timed("acc.ended")
    async def ended(
        self, call_id: str, caller_tag: str, callee_tag: str, *, end_ms: int, ended_by: EndedBy
    ) -> bool:
        record = CallRecord(call_id, caller_tag, callee_tag, end_ms=end_ms, ended_by=ended_by)
        return await self._db.execute(self.sql.ended, _ended_params(record)) > 0

    @timed("acc.write")
    async def write(self, writes: Sequence[AccountingWrite]) -> None:
        """One transaction: the answers, the failures, then the ends (each event's rows
        in their order), every record checked before anything is sent. One record alone
        is one statement (BEGIN and COMMIT would be round trips of their own)."""
        params: dict[str, list[dict[str, Any]]] = {"answered": [], "failed": [], "ended": []}
        for write in writes:
            params[write.event].append(_PARAMS[write.event](write.record))
        sql = self.sql
        statements = {"answered": sql.answered, "failed": sql.failed, "ended": sql.ended_rows}
        steps = [Step(statements[event], rows) for event, rows in params.items() if rows]
        if len(writes) == 1:
            await self._db.execute(steps[0].stmt, steps[0].params[0])
        elif steps:
            await self._db.transaction(steps)

    @timed("acc.close_overdue")
    async def close_overdue(self, *, now_ms: int, max_duration_ms: int) -> int:
        if max_duration_ms <= 0:
            raise InvalidInput(f"max_duration_ms: {max_duration_ms} is not positive")
        params = {
            "cutoff": now_ms - max_duration_ms,
            "duration_ms": max_duration_ms,
            "ended_by": "max-duration",
        }
        return await self._db.execute(self.sql.close_overdue, params)

    @timed("acc.list")
    async def list(
        self,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        call_id: str | None = None,
        limit: int | None = None,
    ) -> list[CallRecord]:
        """From the primary: records are for billing, and a replica may lag behind."""
        filters = {"since": since_ms, "until": until_ms, "call_id": call_id, "limit": limit}
        stmt = self.sql.listing(*(value is not None for value in filters.values()))
        params = {**filters, "call_id": fit("call_id", call_id), "offset": 0}
        rows = await self._db.fetch(stmt, params)
        return [CallRecord(*row) for row in rows]
