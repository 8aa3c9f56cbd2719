"""Contract: `db upgrade` builds the schema of schema.py on an empty database, once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sipfleet.storage import Dsn, SchemaOutdated
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
