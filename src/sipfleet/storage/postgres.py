"""PostgreSQL backend over asyncpg.

A save is one statement, so one round trip and one implicit transaction: data-modifying
CTEs state the rules of ``storage.rules`` (see ``SAVE``). asyncpg prepares each statement
once per connection and reuses it. Caveat of one statement: saves of the same AOR that run
at the very same moment see each other's rows only after commit, so each may answer
without the other's new contact (both are stored), and together they may pass
max_contacts by the contacts they add. One UA registers serially, so this is rare.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from sipfleet.storage.batch import SaveOutcome, SaveRequest
from sipfleet.storage.dsn import Dsn, Kind
from sipfleet.storage.errors import (
    AlreadyExists,
    StorageError,
    StorageUnavailable,
    TransactionConflict,
)
from sipfleet.storage.model import AddressOfRecord, Binding, BindingUpdate
from sipfleet.storage.network import NetworkExecutor
from sipfleet.storage.rules import encode_updates, new_ruid
from sipfleet.storage.schema import location
from sipfleet.storage.sql import Row, binding
from sipfleet.storage.statements import (
    BINDING_COLUMNS,
    BINDING_KEY,
    Statement,
    Step,
    StepResult,
    dialect_for,
)

_COLUMNS = [col.name for col in BINDING_COLUMNS]
_STORED = [n for n in _COLUMNS if n != "id"] + ["flow_key"]
_INSERTED = {"username": "$1", "domain": "$2", "last_modified": "$3"}
_REFRESHED = [n for n in _STORED if n not in ("ruid", *BINDING_KEY)]
_KEY = ", ".join(BINDING_KEY)
# rules.addresses: a flow by its flow key, a plain binding by its contact.
_ADDRESSES = "(c.flow_key = {r}.flow_key AND ({r}.flow_key <> '' OR c.contact = {r}.contact))"
_SAME_KEY = "({r}.contact = c.contact AND {r}.flow_key = c.flow_key)"

# $1 username, $2 domain, $3 now, $4 max_contacts, $5 the updates as a JSON array.
SAVE = f"""
WITH req AS (
    SELECT * FROM jsonb_to_recordset($5::jsonb) AS r(
        contact text, expires bigint, q double precision, callid text, cseq integer,
        received text, path text, flags integer, cflags integer, user_agent text,
        socket text, methods text, instance text, reg_id integer, flow text, flow_key text,
        ruid text)
), cur AS (
    SELECT * FROM location
    WHERE username = $1 AND domain = $2 AND expires > $3
    FOR UPDATE
), live AS (
    SELECT r.* FROM req r WHERE NOT EXISTS (
        SELECT 1 FROM cur c WHERE {_ADDRESSES.format(r="r")}
        AND c.callid = r.callid AND c.cseq >= r.cseq)
), gone AS (
    SELECT c.id FROM cur c
    WHERE NOT EXISTS (SELECT 1 FROM live k WHERE k.expires > $3 AND {_SAME_KEY.format(r="k")})
    AND EXISTS (SELECT 1 FROM live k WHERE {_ADDRESSES.format(r="k")})
), tally AS (
    SELECT (SELECT count(*) FROM cur) AS before,
        (SELECT count(*) FROM cur c WHERE c.id NOT IN (SELECT id FROM gone)
            AND NOT EXISTS (
                SELECT 1 FROM live k WHERE k.expires > $3 AND {_SAME_KEY.format(r="k")}))
        + (SELECT count(*) FROM live WHERE expires > $3) AS after
), allowed AS (
    SELECT 1 FROM tally WHERE after <= $4 OR after <= before
), removed AS (
    DELETE FROM location WHERE id IN (SELECT id FROM gone) AND EXISTS (SELECT 1 FROM allowed)
    RETURNING id
), stored AS (
    INSERT INTO location ({", ".join(_STORED)})
    SELECT {", ".join(_INSERTED.get(n, "k." + n) for n in _STORED)}
    FROM live k WHERE k.expires > $3 AND EXISTS (SELECT 1 FROM allowed)
    ON CONFLICT ({_KEY}) DO UPDATE SET
        {", ".join(f"{n} = excluded.{n}" for n in _REFRESHED)}
    WHERE location.expires <= $3 OR location.callid <> excluded.callid
        OR location.cseq < excluded.cseq
    RETURNING {", ".join(_COLUMNS)}
), kept AS (
    SELECT {", ".join(_COLUMNS)} FROM cur c
    WHERE c.id NOT IN (SELECT id FROM removed)
    AND NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = c.id)
), result AS (
    SELECT * FROM stored UNION ALL SELECT * FROM kept
)
SELECT t.after, EXISTS (SELECT 1 FROM allowed) AS ok, b.*
FROM tally t LEFT JOIN result b ON true
ORDER BY coalesce(b.q, 1.0) DESC, b.id
"""  # noqa: S608 - built from constants only; values are $n parameters

# Batched saves (storage/batch.py): one contact each, one AOR each, no reg-id, stored.
# $1 the entries as a JSON array, $2 now, $3 max_contacts. The same rules as SAVE for one
# contact: a stale refresh changes nothing, a new contact needs room, an expired row of
# the contact is a new binding. Statements of one CTE see the rows as they were before
# it, so the answer is the stored rows plus the current ones not stored again.
_ENTRY = [n for n in _STORED if n != "last_modified"]
_PG_TYPES = {c.name: c.type.compile(dialect=dialect_for("postgresql")) for c in location.c}
SAVE_BATCH = f"""
WITH r AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(
        i integer, {", ".join(f"{n} {_PG_TYPES[n]}" for n in _ENTRY)})
), cur AS (
    SELECT r.i, c.flow_key, {", ".join("c." + n for n in _COLUMNS)} FROM r JOIN location c
    ON c.username = r.username AND c.domain = r.domain AND c.expires > $2
    ORDER BY c.username, c.domain, c.contact, c.flow_key
    FOR UPDATE OF c
), room AS (
    SELECT r.i FROM r
    WHERE (SELECT count(*) FROM cur c WHERE c.i = r.i AND NOT {_SAME_KEY.format(r="r")}) < $3
    OR EXISTS (SELECT 1 FROM cur c WHERE c.i = r.i AND {_SAME_KEY.format(r="r")})
), stored AS (
    INSERT INTO location ({", ".join(_STORED)})
    SELECT {", ".join("$2" if n == "last_modified" else "r." + n for n in _STORED)}
    FROM r WHERE r.i IN (SELECT i FROM room) ORDER BY r.username, r.domain
    ON CONFLICT ({_KEY}) DO UPDATE SET
        {", ".join(f"{n} = excluded.{n}" for n in _REFRESHED)}
    WHERE location.expires <= $2 OR location.callid <> excluded.callid
        OR location.cseq < excluded.cseq
    RETURNING {", ".join(_COLUMNS)}
), result AS (
    SELECT * FROM stored
    UNION ALL
    SELECT {", ".join(_COLUMNS)} FROM cur c
    WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = c.id)
)
SELECT r.i, b.* FROM r JOIN result b ON b.username = r.username AND b.domain = r.domain
ORDER BY r.i, coalesce(b.q, 1.0) DESC, b.id
"""  # noqa: S608 - built from constants only; values are $n parameters

# A standby's lag: 0 when it has replayed all it received (an idle primary sends nothing,
# and the time since the last replayed transaction would grow without any lag), else the
# age of the last transaction it replayed. NULL on a server that is not a standby, and on
# one with no WAL receiver (the primary is unreachable: it cannot know how far behind it
# is, and 0 would hide the outage). Any role sees the receiver's row (its pid).
REPLICATION_LAG = """
SELECT CASE
  WHEN NOT pg_is_in_recovery() THEN NULL
  WHEN NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN NULL
  WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
  ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
END
"""
# Serialization failure (also a hot standby's "conflict with recovery": the read is run
# again, then falls back like any unavailable replica), deadlock, lock not available.
CONFLICTS = {"40001", "40P01", "55P03"}
READ_ONLY = "25006"  # a write on a hot standby (or a primary demoted to one)


class _GuardLost(Exception):
    """A guard step matched nothing: leave the transaction block so it rolls back."""


class PostgresExecutor(NetworkExecutor[Any]):
    kind: Kind = "postgresql"

    async def _connect(self, dsn: Dsn) -> Any:
        return await asyncpg.connect(
            host=dsn.socket or dsn.host,
            port=dsn.port,
            user=dsn.user or None,
            password=dsn.password or None,
            database=dsn.database,
            timeout=self.connect_timeout,
        )

    async def _close(self, conn: Any) -> None:
        conn.terminate()

    def _classify(self, exc: BaseException) -> StorageError:
        message = str(exc).strip() or type(exc).__name__
        state = getattr(exc, "sqlstate", None)
        if isinstance(exc, asyncpg.UniqueViolationError):
            return AlreadyExists(message)
        if state in CONFLICTS:
            return TransactionConflict(message)
        if state == READ_ONLY:  # answered 503 with Retry-After, as a primary that is down
            return StorageUnavailable(
                f"{message}: the server is a read-only standby, not the primary"
            )
        if state is not None and state[:2] in ("08", "53", "57", "3D", "28"):
            return StorageUnavailable(message)  # connection, resources, shutdown, no db/auth
        if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
            return StorageUnavailable(message)
        return StorageError(message)

    async def _ping(self, conn: Any) -> None:
        await conn.fetchval("SELECT 1")

    async def _replication_lag(self, conn: Any) -> float | None:
        lag = await conn.fetchval(REPLICATION_LAG)
        return None if lag is None else float(lag)

    async def _fetch(self, conn: Any, stmt: Statement, args: Sequence[Any]) -> list[Row]:
        return [tuple(record) for record in await conn.fetch(stmt.sql, *args)]

    async def _execute(self, conn: Any, stmt: Statement, args: Sequence[Any]) -> int:
        status: str = await conn.execute(stmt.sql, *args)
        return int(status.rsplit(" ", 1)[-1])

    async def _save(
        self,
        conn: Any,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome:
        records = await conn.fetch(
            SAVE, aor.username, aor.domain, now, max_contacts, encode_updates(updates)
        )
        first = records[0]
        rows = [tuple(record)[2:] for record in records if record["id"] is not None]
        return SaveOutcome([binding(row) for row in rows], int(first["after"]), not first["ok"])

    async def _save_batch(self, conn: Any, requests: Sequence[SaveRequest]) -> list[SaveOutcome]:
        entries = json.dumps([_entry(k, request) for k, request in enumerate(requests, 1)])
        records = await conn.fetch(SAVE_BATCH, entries, requests[0].now, requests[0].max_contacts)
        found: list[list[Binding]] = [[] for _ in requests]
        for record in records:
            row = tuple(record)
            found[row[0] - 1].append(binding(row[1:]))
        return [
            request.outcome(bindings) for request, bindings in zip(requests, found, strict=True)
        ]

    async def _transaction(
        self, conn: Any, steps: Sequence[Step], snapshot: bool
    ) -> list[StepResult] | None:
        isolation = "repeatable_read" if snapshot else "read_committed"
        try:
            async with conn.transaction(isolation=isolation, readonly=snapshot):
                return await self._steps(conn, steps)
        except _GuardLost:
            return None

    @staticmethod
    async def _steps(conn: Any, steps: Sequence[Step]) -> list[StepResult]:
        results: list[StepResult] = []
        for step in steps:
            args = [step.stmt.args(params) for params in step.params]
            if step.fetch:
                rows: list[Row] = []
                for each in args:
                    rows += [tuple(record) for record in await conn.fetch(step.stmt.sql, *each)]
                results.append(rows)
                continue
            matched = 0
            if len(args) == 1:
                status: str = await conn.execute(step.stmt.sql, *args[0])
                matched = int(status.rsplit(" ", 1)[-1])
            elif args:  # asyncpg pipelines the rows; it reports no count, so count them
                await conn.executemany(step.stmt.sql, args)
                matched = len(args)
            if step.guard and matched == 0:
                raise _GuardLost
            results.append(matched)
        return results


_UPDATE_FIELDS = _ENTRY[3:]  # after ruid, username, domain: BindingUpdate's fields


def _entry(ordinal: int, request: SaveRequest) -> dict[str, Any]:
    update = request.update
    entry: dict[str, Any] = {
        "i": ordinal,
        "ruid": new_ruid(),
        "username": request.aor.username,
        "domain": request.aor.domain,
    }
    for name in _UPDATE_FIELDS:
        entry[name] = getattr(update, name)
    return entry
