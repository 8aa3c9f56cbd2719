"""SQLite backend: stdlib sqlite3 in WAL mode, on one dedicated thread.

sqlite3 blocks. A statement takes microseconds, but when another process of `sipfleet up`
holds the write lock a call can wait up to ``busy_timeout``; on the event loop that would
stall every SIP transaction of the process. So all calls go to one worker thread that owns
the connection (one writer per process; WAL lets the other processes read meanwhile).
A read DSN naming another file (a copy kept by some other tool) gets its own connection on
the same thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sipfleet.storage.batch import SaveOutcome, SaveRequest
from sipfleet.storage.dsn import Dsns
from sipfleet.storage.errors import (
    AlreadyExists,
    InvalidInput,
    StorageError,
    StorageUnavailable,
)
from sipfleet.storage.model import AddressOfRecord, BindingUpdate, DatabaseHealth
from sipfleet.storage.pool import Health
from sipfleet.storage.rules import new_ruid, plan_save
from sipfleet.storage.sql import Row, binding
from sipfleet.storage.statements import Statement, Statements, Step, StepResult

log = logging.getLogger("sipfleet.storage")
T = TypeVar("T")

# How long a statement waits for another process's write lock. Above the registrar's
# storage deadline (1 s: the REGISTER gets its 503 first, core/registrar.py), and short
# enough that a write stuck behind a held lock gives this process's one database thread
# back soon: the calls queued behind it each wait their turn, not 5 s each.
BUSY_TIMEOUT_MS = 2000
# Errors that mean "not now" rather than "wrong statement".
_UNAVAILABLE_HINTS = ("locked", "busy", "unable to open", "disk i/o", "readonly", "disk is full")


def connect(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) to an existing database file."""
    conn = sqlite3.connect(
        f"file:{path}?mode=rw", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL: a power loss may forget the last commits, never corrupt the file.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def classify(exc: sqlite3.Error, path: Path) -> StorageError:
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return AlreadyExists(text)
    if isinstance(exc, sqlite3.OperationalError) and any(
        hint in text.lower() for hint in _UNAVAILABLE_HINTS
    ):
        hint = " (does it exist? `sipfleet db upgrade` creates it)" if "open" in text else ""
        return StorageUnavailable(f"{text}{hint}")
    return StorageError(f"database sqlite://{path}: {text}")


class SqliteExecutor:
    def __init__(self, dsns: Dsns, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        assert dsns.write.path is not None
        self._dsns = dsns
        self._path = dsns.write.path
        self._busy_timeout_ms = busy_timeout_ms
        self._statements = Statements("sqlite")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipfleet-sqlite")
        self._read_path = next((d.path for d in dsns.reads if d.path is not None), self._path)
        self._conns: dict[Path, sqlite3.Connection] = {}
        self._health = Health(str(dsns.write))

    @property
    def dsns(self) -> Dsns:
        return self._dsns

    @property
    def statements(self) -> Statements:
        return self._statements

    async def fetch(
        self, stmt: Statement, params: Mapping[str, Any], *, replica: bool = False
    ) -> list[Row]:
        path = self._read_path if replica else self._path
        return await self._call(
            lambda conn: conn.execute(stmt.sql, stmt.args(params)).fetchall(), path
        )

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        return await self._call(lambda conn: conn.execute(stmt.sql, stmt.args(params)).rowcount)

    async def save(
        self,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome:
        return await self._call(lambda conn: self._save(conn, aor, updates, now, max_contacts))

    async def save_batch(self, requests: Sequence[SaveRequest]) -> list[SaveOutcome]:
        """One hop to the thread and one transaction for the whole batch."""
        return await self._call(lambda conn: self._save_all(conn, requests))

    async def transaction(
        self,
        steps: Sequence[Step],
        *,
        snapshot: bool = False,
        replica: bool = False,
        extra_time: float = 0.0,  # no time limit here: sqlite3 waits busy_timeout at most
    ) -> list[StepResult] | None:
        path = self._read_path if snapshot and replica else self._path
        return await self._call(lambda conn: self._transaction(conn, steps, snapshot), path)

    async def health(self) -> list[DatabaseHealth]:
        """The one file: does it answer (SQLite has no replicas)."""
        name = str(self._dsns.write)
        try:
            await self._call(lambda conn: conn.execute("SELECT 1").fetchall())
        except StorageError as exc:
            return [DatabaseHealth(name, "primary", False, error=str(exc))]
        return [DatabaseHealth(name, "primary", True)]

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    async def _call(self, work: Callable[[sqlite3.Connection], T], path: Path | None = None) -> T:
        loop = asyncio.get_running_loop()
        path = path or self._path
        try:
            result = await loop.run_in_executor(self._thread, self._run, work, path)
        except StorageUnavailable as exc:
            self._health.failed(str(exc))
            raise StorageUnavailable(f"database sqlite://{path} unreachable: {exc}") from exc
        self._health.succeeded()
        return result

    def _run(self, work: Callable[[sqlite3.Connection], T], path: Path) -> T:
        """On the worker thread: (re)connect when needed, map sqlite3's errors."""
        try:
            conn = self._conns.get(path)
            if conn is None:
                conn = self._conns[path] = connect(path, self._busy_timeout_ms)
            return work(conn)
        except sqlite3.Error as exc:
            error = classify(exc, path)
            if isinstance(error, StorageUnavailable):
                self._close(path)  # reopen on the next call: the file may be back by then
            raise error from exc
        except OverflowError as exc:  # sqlite3 refuses an int past 64 bits before SQLite sees it
            raise InvalidInput(f"value: too large for an SQLite INTEGER ({exc})") from exc

    def _close(self, path: Path | None = None) -> None:
        for each in [path] if path else list(self._conns):
            conn = self._conns.pop(each, None)
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    log.debug("closing %s: %s", each, exc)

    @staticmethod
    def _transaction(
        conn: sqlite3.Connection, steps: Sequence[Step], snapshot: bool
    ) -> list[StepResult] | None:
        # WAL: a deferred transaction reads one snapshot from its first read on; a writer
        # takes the write lock first (IMMEDIATE), so what it reads cannot go stale.
        conn.execute("BEGIN" if snapshot else "BEGIN IMMEDIATE")
        try:
            results: list[StepResult] = []
            for step in steps:
                args = [step.stmt.args(params) for params in step.params]
                if step.fetch:
                    rows: list[Row] = []
                    for each in args:
                        rows += conn.execute(step.stmt.sql, each).fetchall()
                    results.append(rows)
                    continue
                matched = conn.executemany(step.stmt.sql, args).rowcount if args else 0
                if step.guard and matched == 0:
                    conn.execute("ROLLBACK")
                    return None
                results.append(matched)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _save(
        self,
        conn: sqlite3.Connection,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome:
        return self._save_all(conn, [(aor, updates, now, max_contacts)])[0]

    def _save_all(
        self,
        conn: sqlite3.Connection,
        saves: Sequence[SaveRequest | tuple[AddressOfRecord, Sequence[BindingUpdate], int, int]],
    ) -> list[SaveOutcome]:
        # IMMEDIATE takes the write lock first, so the reads below cannot go stale.
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._save_one(conn, *_unpacked(save)) for save in saves]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _save_one(
        self,
        conn: sqlite3.Connection,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        now: int,
        max_contacts: int,
    ) -> SaveOutcome:
        """One save inside the caller's write transaction; a refused one writes nothing."""
        sql = self._statements
        key = {"username": aor.username, "domain": aor.domain, "now": now}
        current = [binding(r) for r in conn.execute(sql.lookup.sql, sql.lookup.args(key))]
        plan = plan_save(current, updates, now, max_contacts)
        if plan.refused:
            return SaveOutcome(current, plan.after, refused=True)
        for binding_id in plan.removed_ids:
            conn.execute(sql.remove_by_id.sql, (binding_id,))
        for update in plan.stored:
            row = self._row(aor, update, now)
            conn.execute(sql.store_binding.sql, sql.store_binding.args(row))
        rows = conn.execute(sql.lookup.sql, sql.lookup.args(key)).fetchall()
        return SaveOutcome([binding(r) for r in rows], plan.after, refused=False)

    @staticmethod
    def _row(aor: AddressOfRecord, update: BindingUpdate, now: int) -> dict[str, Any]:
        return {
            "ruid": new_ruid(),
            "username": aor.username,
            "domain": aor.domain,
            "contact": update.contact,
            "received": update.received,
            "path": update.path,
            "expires": update.expires,
            "q": update.q,
            "callid": update.callid,
            "cseq": update.cseq,
            "last_modified": now,
            "flags": update.flags,
            "cflags": update.cflags,
            "user_agent": update.user_agent,
            "socket": update.socket,
            "methods": update.methods,
            "instance": update.instance,
            "reg_id": update.reg_id,
            "flow": update.flow,
            "flow_key": update.flow_key,
        }


def _unpacked(
    save: SaveRequest | tuple[AddressOfRecord, Sequence[BindingUpdate], int, int],
) -> tuple[AddressOfRecord, Sequence[BindingUpdate], int, int]:
    if isinstance(save, SaveRequest):
        return save.aor, [save.update], save.now, save.max_contacts
    return save
