"""`sipfleet db upgrade`: Alembic, driven from Python over the same drivers as at run time.

SQLite migrates through sqlite3; MariaDB and PostgreSQL through SQLAlchemy's asyncmy and
asyncpg dialects (``run_sync`` on an async engine), so no second, synchronous driver is
needed. Upgrading a database that is at the head already changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from sipfleet.storage.dsn import Dsn
from sipfleet.storage.errors import StorageError, StorageUnavailable
from sipfleet.storage.file_mode import create_owner_only, tighten
from sipfleet.storage.schema import VERSION_TABLE

HERE = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config() -> AlembicConfig:
    config = AlembicConfig(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: sa.Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _upgrade(connection: sa.Connection, revision: str) -> UpgradeResult:
    before = _current(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
    return UpgradeResult(before, _current(connection))


async def upgrade(dsn: Dsn, revision: str = "head") -> UpgradeResult:
    result: UpgradeResult = await _run(dsn, _upgrade, revision)
    return result


async def current_revision(dsn: Dsn) -> str | None:
    revision: str | None = await _run(dsn, _current)
    return revision


async def _run(dsn: Dsn, work: Any, *args: Any) -> Any:
    try:
        if dsn.path is not None:
            return _run_sqlite(dsn.path, work, *args)
        engine = create_async_engine(dsn.sqlalchemy_url(), poolclass=sa.NullPool)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(work, *args)
        finally:
            await engine.dispose()
    except (OperationalError, InterfaceError, OSError, TimeoutError) as exc:
        raise StorageUnavailable(f"database {dsn} unreachable: {_reason(exc)}") from exc
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StorageError(f"database {dsn}: {_reason(exc)}") from exc


def _run_sqlite(path: Path, work: Any, *args: Any) -> Any:
    create_owner_only(path)  # before SQLite makes it with the umask's mode (often 0644)
    tighten(path)
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")
            return work(conn, *args)
    finally:
        engine.dispose()


def _reason(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
