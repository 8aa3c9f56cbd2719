"""Contract: `db upgrade` builds the schema of schema.py on an empty database, once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sipfleet.storage import CallRecord, Dsn, SchemaOutdated
from sipfleet.storage.migrate import _run, current_revision, head_revision, upgrade
from sipfleet.storage.schema import TABLES, VERSION_TABLE, metadata
from sipfleet.storage.sql import SCHEMA_REVISION
from tests.storage.conftest import Databases, OpenStorage


def _differences(connection: sa.Connection) -> list[Any]:
    opts = {"compare_type": True, "version_table": VERSION_TABLE}
    context = MigrationContext.configure(connection, opts=opts)
    return list(compare_metadata(context, metadata))


def _tables(connection: sa.Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


async def test_upgrade_creates_everything_and_runs_once(
    databases: Databases, opened: OpenStorage
) -> None:
    dsn = Dsn.parse(databases.empty())
    storage = opened(dsn)
    with pytest.raises(SchemaOutdated, match="sipfleet db upgrade"):
        await storage.check_schema()
    assert await current_revision(dsn) is None

    first = await upgrade(dsn)
    assert (first.before, first.after, first.changed) == (None, head_revision(), True)
    tables = await _run(dsn, _tables)
    assert tables == {table.name for table in TABLES} | {VERSION_TABLE}
    # The migration builds exactly what schema.py declares: columns, types, keys, indexes.
    assert await _run(dsn, _differences) == []
    await storage.check_schema()

    second = await upgrade(dsn)
    assert (second.before, second.after, second.changed) == (head_revision(),) * 2 + (False,)


def test_code_expects_the_head_revision() -> None:
    assert head_revision() == SCHEMA_REVISION


async def test_upgrade_of_a_0002_database_adds_acc(
    databases: Databases, opened: OpenStorage
) -> None:
    """A database of the release before accounting: `db upgrade` adds the table."""
    dsn = Dsn.parse(databases.empty())
    await upgrade(dsn, "0002")
    assert "acc" not in await _run(dsn, _tables)
    storage = opened(dsn)
    with pytest.raises(SchemaOutdated, match="at revision 0002"):
        await storage.check_schema()

    result = await upgrade(dsn)
    assert (result.before, result.after) == ("0002", head_revision())
    assert "acc" in await _run(dsn, _tables)
    assert await _run(dsn, _differences) == []
    await storage.check_schema()
    record = CallRecord("c@x", "a", "b", status=200, start_ms=1, answer_ms=2)
    await storage.accounting.answered(record)
    assert [r.call_id for r in await storage.accounting.list()] == ["c@x"]
