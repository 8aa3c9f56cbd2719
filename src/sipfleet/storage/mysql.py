"""MariaDB/MySQL backend over asyncmy.

A save is one round trip: a multi-statement batch (START TRANSACTION … COMMIT) that states
the rules of ``storage.rules`` in SQL. Its first statement locks the AOR's current rows, so
refreshes of one AOR run one after the other. Sessions run READ COMMITTED (no gap locks):
like PostgreSQL, two saves adding *new* contacts to one AOR at the same instant may each
answer without the other's contact (both are stored) and may pass max_contacts together.
The request travels as one JSON parameter, read with JSON_TABLE (MariaDB 10.6+, MySQL
8.0+). The statements are prepared once per connection (PREPARE, then EXECUTE per save):
parsing them cost as much as running them. asyncmy quotes every parameter, so the SQL text
stays constant (built from the constants below only).
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import asyncmy
from asyncmy.constants import CLIENT
from asyncmy.errors import Error as MysqlError
from asyncmy.errors import IntegrityError, InterfaceError, OperationalError

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
    BINARY_TEXT,
    BINDING_COLUMNS,
    BINDING_KEY,
    BY_AOR,
    Statement,
    Step,
    StepResult,
    dialect_for,
)

# Server error codes.
# Lock wait timeout, deadlock, and a deadlock met while taking the AUTO-INC lock (1467).
CONFLICTS = {1205, 1213, 1467}
# The server cannot serve: refused, gone away, shutting down... 1047 is Galera's "WSREP
# has not yet prepared node for application use": a node cut off from the primary
# component (or still joining) refuses every statement until it is back in it.
GONE = {
    1040,
    1044,
    1045,
    1047,
    1049,
    1053,
    1152,
    1158,
    1159,
    1160,
    1161,
    1927,
    2002,
    2003,
    2005,
    2006,
    2013,
    2055,
    4031,
}


def _binary_text(columns: str) -> str:
    """JSON_TABLE's text columns in the tables' character set and binary collation. Left
    out, they take the server's default (latin1 on a server without a configuration):
    text beyond it is refused ("Incorrect string value", a user's refresh answered as
    too many contacts), and every comparison with a table's column converts a string
    (``my_convert_fix`` among the top of MariaDB's profile under load)."""
    return re.sub(r"VARCHAR\(\d+\)", lambda match: f"{match.group(0)} {BINARY_TEXT}", columns)


_ALL_COLUMNS = _binary_text("""
    i FOR ORDINALITY, contact VARCHAR(512) PATH '$.contact', expires BIGINT PATH '$.expires',
    q DOUBLE PATH '$.q', callid VARCHAR(255) PATH '$.callid', cseq BIGINT PATH '$.cseq',
    received VARCHAR(255) PATH '$.received', path VARCHAR(2048) PATH '$.path',
    flags INT PATH '$.flags', cflags INT PATH '$.cflags',
    user_agent VARCHAR(255) PATH '$.user_agent', socket VARCHAR(255) PATH '$.socket',
    methods VARCHAR(255) PATH '$.methods', instance VARCHAR(255) PATH '$.instance',
    reg_id INT PATH '$.reg_id', flow VARCHAR(255) PATH '$.flow',
    flow_key VARCHAR(32) PATH '$.flow_key', ruid VARCHAR(64) PATH '$.ruid'
""")
# The columns the rules look at: fewer JSON paths to evaluate.
_KEY_COLUMNS = _binary_text("""
    i FOR ORDINALITY, contact VARCHAR(512) PATH '$.contact', expires BIGINT PATH '$.expires',
    callid VARCHAR(255) PATH '$.callid', cseq BIGINT PATH '$.cseq',
    flow_key VARCHAR(32) PATH '$.flow_key'
""")


def _request(columns: str, alias: str) -> str:
    return f"JSON_TABLE(@sf_req, '$[*]' COLUMNS ({columns})) AS {alias}"


def _live(columns: str) -> str:
    """The request's contacts that are not stale (their ordinals are in @sf_live)."""
    return (
        f"(SELECT r.* FROM {_request(columns, 'r')} "  # noqa: S608 - constants only
        "WHERE JSON_CONTAINS(@sf_live, CAST(r.i AS CHAR))) AS k"
    )


def _addresses(alias: str) -> str:
    """rules.addresses: a flow by its flow key, a plain binding by its contact."""
    return (
        f"(c.flow_key = {alias}.flow_key AND "
        f"({alias}.flow_key <> '' OR c.contact = {alias}.contact))"
    )


def _same_key(alias: str) -> str:
    return f"(c.contact = {alias}.contact AND c.flow_key = {alias}.flow_key)"


_AOR_ROWS = "c.username = @sf_user AND c.domain = @sf_domain AND c.expires > @sf_now"
_STORED_COLUMNS = [col.name for col in BINDING_COLUMNS if col.name != "id"] + ["flow_key"]
_INSERTED = {"username": "@sf_user", "domain": "@sf_domain", "last_modified": "@sf_now"}
_REFRESHED = [n for n in _STORED_COLUMNS if n not in ("ruid", *BINDING_KEY)]

_FAST_VALUES = [n for n in _STORED_COLUMNS if n not in _INSERTED]
_ENTRY = [n for n in _STORED_COLUMNS if n != "last_modified"]  # one batched save, in order
_TYPES = {c.name: _binary_text(c.type.compile(dialect=dialect_for("mysql"))) for c in location.c}
_BATCH_FRESH = (
    "@sf_fresh := (location.expires <= @sf_now OR location.callid <> VALUES(callid) "
    "OR location.cseq < VALUES(cseq))"
)


def _entries(*names: str) -> str:
    """The batch's entries as a table ``r``: their ordinal ``i`` and the named fields."""
    columns = ", ".join(f"{n} {_TYPES[n]} PATH '$[{_ENTRY.index(n)}]'" for n in names)
    return f"JSON_TABLE(@sf_req, '$[*]' COLUMNS (i FOR ORDINALITY, {columns})) AS r"


# Prepared once per connection (``_prepare``); they read their inputs from @sf_ variables.
PREPARED = {
    # The lock: later statements see the AOR's rows as they are until COMMIT.
    "sf_lock": f"SELECT COUNT(*) INTO @sf_before FROM location c WHERE {_AOR_ROWS} FOR UPDATE",  # noqa: S608
    # Which request contacts are not stale, and how many of them store a binding.
    "sf_live": "SELECT JSON_ARRAYAGG(r.i), COALESCE(SUM(r.expires > @sf_now), 0) "  # noqa: S608
    f"INTO @sf_live, @sf_stored FROM {_request(_KEY_COLUMNS, 'r')} WHERE NOT EXISTS ("
    f"SELECT 1 FROM location c WHERE {_AOR_ROWS} AND {_addresses('r')} "
    "AND c.callid = r.callid AND c.cseq >= r.cseq)",
    # A current binding addressed by a live contact is replaced (same contact) or removed;
    # the others are kept.
    "sf_tally": "SELECT COUNT(*) - COALESCE(SUM(x.addressed), 0) + @sf_stored, "  # noqa: S608
    "JSON_ARRAYAGG(IF(x.addressed AND NOT x.restored, x.id, NULL)) "
    "INTO @sf_after, @sf_gone FROM (SELECT c.id, "
    f"EXISTS (SELECT 1 FROM {_live(_KEY_COLUMNS)} WHERE {_addresses('k')}) AS addressed, "
    f"EXISTS (SELECT 1 FROM {_live(_KEY_COLUMNS)} WHERE k.expires > @sf_now "
    f"AND {_same_key('k')}) AS restored FROM location c WHERE {_AOR_ROWS}) AS x",
    "sf_remove": "DELETE FROM location WHERE @sf_ok AND username = @sf_user "
    "AND domain = @sf_domain AND JSON_CONTAINS(@sf_gone, CAST(id AS CHAR))",
    "sf_store": f"INSERT INTO location ({', '.join(_STORED_COLUMNS)}) "  # noqa: S608
    f"SELECT {', '.join(_INSERTED.get(n, 'k.' + n) for n in _STORED_COLUMNS)} "
    f"FROM {_live(_ALL_COLUMNS)} WHERE @sf_ok AND k.expires > @sf_now "
    "ON DUPLICATE KEY UPDATE " + ", ".join(f"{n} = VALUES({n})" for n in _REFRESHED),
    # The tally, then every current binding (NULLs when there is none).
    "sf_result": "SELECT @sf_after, @sf_ok, "  # noqa: S608
    f"{', '.join('c.' + c.name for c in BINDING_COLUMNS)} FROM (SELECT 1) AS one "
    f"LEFT JOIN location c ON {_AOR_ROWS} ORDER BY COALESCE(c.q, 1.0) DESC, c.id",
    # Saves of one contact without reg-id that store a binding (most REGISTERs), batched
    # (storage/batch.py): @sf_req is a JSON array of entries, one AOR each (_ENTRY order).
    # Which entries have room (another binding, or one of this key to refresh), and the id
    # of the row of each entry's key (its contact, flow key ''), if there is one (expired
    # or not).
    "sf_b_classify": "SELECT COALESCE(GROUP_CONCAT(IF(x.room, NULL, x.i)), ''), "  # noqa: S608
    "JSON_ARRAYAGG(x.id ORDER BY x.i) INTO @sf_full, @sf_ids FROM (SELECT r.i, "
    f"MAX(IF({_same_key('r')}, c.id, NULL)) AS id, "
    f"COUNT(IF(NOT {_same_key('r')} AND c.expires > @sf_now, 1, NULL)) < @sf_max "
    f"OR COUNT(IF({_same_key('r')} AND c.expires > @sf_now, 1, NULL)) > 0 AS room "
    f"FROM {_entries('username', 'domain', 'contact', 'flow_key')} LEFT JOIN location c "
    f"{BY_AOR} ON c.username = r.username AND c.domain = r.domain GROUP BY r.i) AS x",
    # One write for every entry with room. It names the existing row's id, so a refresh
    # meets its row on the primary key at once: an ON DUPLICATE KEY UPDATE that met it on
    # (username, domain, contact) first inserted the row and the ruid, then undid both,
    # and cost four times an UPDATE. The CSeq rule is decided once per row on the locked
    # row (assignments run left to right).
    "sf_b_store": f"INSERT INTO location (id, {', '.join(_STORED_COLUMNS)}) "  # noqa: S608
    "SELECT JSON_VALUE(@sf_ids, CONCAT('$[', r.i - 1, ']')), "
    + ", ".join("@sf_now" if n == "last_modified" else f"r.{n}" for n in _STORED_COLUMNS)
    + f" FROM {_entries(*_ENTRY)} WHERE NOT FIND_IN_SET(r.i, @sf_full) "
    "ON DUPLICATE KEY UPDATE "
    + ", ".join(
        f"{n} = IF({_BATCH_FRESH if i == 0 else '@sf_fresh'}, VALUES({n}), location.{n})"
        for i, n in enumerate(_REFRESHED)
    ),
    # Every current binding of each entry's AOR, by entry.
    "sf_b_result": f"SELECT r.i, {', '.join('c.' + c.name for c in BINDING_COLUMNS)} "  # noqa: S608
    f"FROM {_entries('username', 'domain')} JOIN location c {BY_AOR} "
    "ON c.username = r.username "
    "AND c.domain = r.domain AND c.expires > @sf_now "
    "ORDER BY r.i, COALESCE(c.q, 1.0) DESC, c.id",
    "sf_fast_remove": "DELETE FROM location WHERE username = @sf_user "
    "AND domain = @sf_domain AND contact = @sf_v_contact AND flow_key = '' "
    "AND NOT (expires > @sf_now "
    "AND callid = @sf_v_callid AND cseq >= @sf_v_cseq)",
}

# One round trip; only sf_result returns rows.
SAVE_BATCH = ";\n".join(
    [
        "START TRANSACTION",
        "SET @sf_req = %s, @sf_user = %s, @sf_domain = %s, @sf_now = %s, @sf_max = %s",
        "EXECUTE sf_lock",
        "EXECUTE sf_live",
        "EXECUTE sf_tally",
        # A save may not grow an AOR past max_contacts (it may shrink or refresh it).
        "SET @sf_ok = @sf_after <= @sf_max OR @sf_after <= @sf_before",
        "EXECUTE sf_remove",
        "EXECUTE sf_store",
        "EXECUTE sf_result",
        "COMMIT",
    ]
)
PREPARE_BATCH = ";\n".join(f"PREPARE {name} FROM %s" for name in PREPARED)
_FAST_SET = "SET @sf_user = %s, @sf_domain = %s, @sf_now = %s, @sf_max = %s, " + ", ".join(
    f"@sf_v_{n} = %s" for n in _FAST_VALUES
)
FAST_REMOVE_BATCH = f"{_FAST_SET};\nEXECUTE sf_fast_remove;\nEXECUTE sf_result"
# Batched saves: one round trip, three statements however many REGISTERs it carries.
STORE_BATCH = (
    "SET @sf_req = %s, @sf_now = %s, @sf_max = %s;\n"
    "EXECUTE sf_b_classify;\nEXECUTE sf_b_store;\nEXECUTE sf_b_result"
)


# After ruid, username, domain: BindingUpdate's fields, read in one call per entry.
_UPDATE_FIELDS = operator.attrgetter(*_ENTRY[3:])


def _entry(request: SaveRequest) -> list[Any]:
    return [new_ruid(), request.aor.username, request.aor.domain, *_UPDATE_FIELDS(request.update)]


def _key(request: SaveRequest) -> tuple[str, str]:
    return request.aor.username, request.aor.domain


def _bindings(rows: list[Row]) -> list[Binding]:
    """The bindings of sf_result's rows (after its two tally columns; NULLs: none)."""
    return [binding(row[2:]) for row in rows if row[2] is not None]


@dataclass(slots=True)
class Session:
    """A pooled connection, and whether the save's statements are prepared on it yet."""

    conn: Any
    prepared: bool = False


class MysqlExecutor(NetworkExecutor[Session]):
    kind: Kind = "mysql"

    async def _connect(self, dsn: Dsn) -> Session:
        conn = await asyncmy.connect(
            host=dsn.host,
            port=dsn.port,
            user=dsn.user or None,
            password=dsn.password,
            database=dsn.database,
            unix_socket=dsn.socket or None,
            charset="utf8mb4",
            autocommit=True,
            # UPDATE counts matched rows, not changed ones: "found" means found.
            client_flag=CLIENT.FOUND_ROWS,
            connect_timeout=self.connect_timeout,
            # Session strings compare byte-wise, like the tables (schema.py).
            init_command="SET collation_connection = utf8mb4_bin",
        )
        # No gap locks: saves of neighbouring new AORs do not queue behind each other.
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        except BaseException:
            conn.close()
            raise
        return Session(conn)

    async def _close(self, session: Session) -> None:
        session.conn.close()

    def _classify(self, exc: BaseException) -> StorageError:
        if isinstance(exc, IntegrityError):
            return AlreadyExists(str(exc.args[-1]) if exc.args else str(exc))
        code = exc.args[0] if isinstance(exc, MysqlError) and exc.args else None
        message = str(exc.args[-1]) if isinstance(exc, MysqlError) and exc.args else str(exc)
        if code in CONFLICTS:
            return TransactionConflict(message)
        if code in GONE or isinstance(exc, OSError | TimeoutError | InterfaceError):
            return StorageUnavailable(message or type(exc).__name__)
        if isinstance(exc, OperationalError) and code is not None and code >= 2000:
            return StorageUnavailable(message)  # client-side: the connection failed
        return StorageError(message)

    async def _ping(self, session: Session) -> None:
        async with session.conn.cursor() as cursor:
            await cursor.execute("SELECT 1")
            await cursor.fetchall()

    async def _replication_lag(self, session: Session) -> float | None:
        # Needs the SLAVE MONITOR privilege (MariaDB 10.5.9+; REPLICATION CLIENT before).
        async with session.conn.cursor() as cursor:
            await cursor.execute("SHOW SLAVE STATUS")
            row = await cursor.fetchone()
            if row is None:
                return None  # not a replica
            names = [column[0] for column in cursor.description]
        behind = dict(zip(names, row, strict=True)).get("Seconds_Behind_Master")
        return None if behind is None else float(behind)

    async def _fetch(self, session: Session, stmt: Statement, args: Sequence[Any]) -> list[Row]:
        async with session.conn.cursor() as cursor:
            await cursor.execute(stmt.sql, args)
            return list(await cursor.fetchall())

    async def _execute(self, session: Session, stmt: Statement, args: Sequence[Any]) -> int:
        async with session.conn.cursor() as cursor:
            await cursor.execute(stmt.sql, args)
            return int(cursor.rowcount)

    async def _save(
        self,
        session: Session,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome:
        await self._prepare(session)
        if len(updates) == 1 and updates[0].reg_id is None:
            if updates[0].expires > now:
                request = SaveRequest(aor, updates[0], now, max_contacts)
                [outcome] = await self._save_batch(session, [request])
                return outcome
            return await self._fast_remove(session, aor, updates[0], now, max_contacts)
        args = (encode_updates(updates), aor.username, aor.domain, now, max_contacts)
        try:
            results = await self._batch(session.conn, SAVE_BATCH, args)
        except Exception:
            await self._rollback(session.conn)  # (when cancelled it is closed instead)
            raise
        [rows] = results
        after, ok = rows[0][:2]
        return SaveOutcome(_bindings(rows), int(after), not ok)

    async def _save_batch(
        self, session: Session, requests: Sequence[SaveRequest]
    ) -> list[SaveOutcome]:
        """Saves of one contact each, of different AORs, in one round trip (STORE_BATCH).

        Each entry's write is one row of one statement: nothing is half-written, and a
        batch run again (after a deadlock) meets its own Call-IDs and CSeqs.
        """
        await self._prepare(session)
        now, max_contacts = requests[0].now, requests[0].max_contacts
        # Rows are locked in key order, the same in every batch: two batches never wait
        # for each other in a circle.
        order = sorted(range(len(requests)), key=lambda k: _key(requests[k]))
        entries = json.dumps([_entry(requests[k]) for k in order])
        [rows] = await self._batch(session.conn, STORE_BATCH, (entries, now, max_contacts))
        found: list[list[Binding]] = [[] for _ in requests]
        for row in rows:
            found[order[row[0] - 1]].append(binding(row[1:]))
        return [
            request.outcome(bindings) for request, bindings in zip(requests, found, strict=True)
        ]

    async def _prepare(self, session: Session) -> None:
        if not session.prepared:
            # Parsed once per connection, not on every REGISTER (first use: the tables must
            # exist by then, which they need not when the connection opens).
            await self._batch(session.conn, PREPARE_BATCH, list(PREPARED.values()))
            session.prepared = True

    async def _fast_remove(
        self,
        session: Session,
        aor: AddressOfRecord,
        update: BindingUpdate,
        now: int,
        max_contacts: int,
    ) -> SaveOutcome:
        """One contact without reg-id, expires <= now: one DELETE (unless it is stale)."""
        values = {"ruid": new_ruid(), **asdict(update), "flow_key": update.flow_key}
        args = [aor.username, aor.domain, now, max_contacts, *(values[n] for n in _FAST_VALUES)]
        [rows] = await self._batch(session.conn, FAST_REMOVE_BATCH, args)
        bindings = _bindings(rows)
        return SaveOutcome(bindings, len(bindings), False)

    async def _transaction(
        self, session: Session, steps: Sequence[Step], snapshot: bool
    ) -> list[StepResult] | None:
        conn = session.conn
        async with conn.cursor() as cursor:
            if snapshot:  # sessions run READ COMMITTED: this one transaction reads one state
                await cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            else:
                await cursor.execute("START TRANSACTION")
            try:
                results = await self._steps(cursor, steps)
                await cursor.execute("ROLLBACK" if results is None else "COMMIT")
            except Exception:
                await self._rollback(conn)  # (when cancelled it is closed instead)
                raise
        return results

    @staticmethod
    async def _steps(cursor: Any, steps: Sequence[Step]) -> list[StepResult] | None:
        results: list[StepResult] = []
        for step in steps:
            args = [step.stmt.args(params) for params in step.params]
            if step.fetch:
                rows: list[Row] = []
                for each in args:
                    await cursor.execute(step.stmt.sql, each)
                    rows += list(await cursor.fetchall())
                results.append(rows)
                continue
            matched = 0
            if len(args) == 1:
                await cursor.execute(step.stmt.sql, args[0])
                matched = int(cursor.rowcount)
            elif args:  # INSERT … VALUES: sent as multi-row INSERTs
                matched = int(await cursor.executemany(step.stmt.sql, args))
            if step.guard and matched == 0:
                return None
            results.append(matched)
        return results

    @staticmethod
    async def _batch(conn: Any, sql: str, args: Sequence[Any]) -> list[list[Row]]:
        """Run a multi-statement batch; the rows of each statement that returned rows."""
        results: list[list[Row]] = []
        async with conn.cursor() as cursor:
            await cursor.execute(sql, args)
            while True:
                if cursor.description:
                    results.append(list(await cursor.fetchall()))
                if not await cursor.nextset():
                    return results

    async def _rollback(self, conn: Any) -> None:
        """After a failed batch the transaction may still be open: end it."""
        try:
            await conn.rollback()
        except Exception as exc:
            raise StorageUnavailable(f"rollback failed: {exc}") from exc
