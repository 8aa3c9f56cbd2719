"""Contract: `db upgrade` builds the schema of schema.py on an empty database, once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sipfleet.storage import Aor, BindingUpdate, CallRecord, Dsn, SchemaOutdated
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


def _insert_0003_bindings(connection: sa.Connection) -> None:
    """Rows as release 0003 stored them: a plain binding and an RFC 5626 flow."""
    row = {
        "username": "alice",
        "domain": "example.com",
        "expires": 2_000_000_000,
        "callid": "c",
        "cseq": 1,
        "last_modified": 1,
    }
    location = sa.table(
        "location",
        *(sa.column(name) for name in [*row, "ruid", "contact"]),
        sa.column("instance"),
        sa.column("reg_id"),
    )
    connection.execute(location.insert().values(ruid="r1", contact="sip:a@desk", **row))
    connection.execute(
        location.insert().values(
            ruid="r2", contact="sip:a@phone", instance="<urn:uuid:1>", reg_id=1, **row
        )
    )


async def test_upgrade_of_a_0003_database_keys_stored_flows_by_instance_and_reg_id(
    databases: Databases, opened: OpenStorage
) -> None:
    """The flows already stored get their flow key: the phone's second flow with the same
    Contact is a binding of its own, and its first flow's REGISTER still replaces its row."""
    dsn = Dsn.parse(databases.empty())
    await upgrade(dsn, "0003")
    await _run(dsn, _insert_0003_bindings)
    assert (await upgrade(dsn)).after == head_revision()
    assert await _run(dsn, _differences) == []
    storage = opened(dsn)
    now, alice = 1_700_000_000, Aor("alice", "example.com")

    def flow(reg_id: int, callid: str) -> BindingUpdate:
        return BindingUpdate(
            "sip:a@phone", now + 60, callid, 2, instance="<urn:uuid:1>", reg_id=reg_id
        )

    await storage.location.save(alice, [flow(2, "d")], now=now, max_contacts=5)
    result = await storage.location.save(alice, [flow(1, "c")], now=now, max_contacts=5)
    assert sorted((b.ruid, b.contact, b.reg_id) for b in result if b.reg_id != 2) == [
        ("r1", "sip:a@desk", None),
        ("r2", "sip:a@phone", 1),
    ]
    assert len(result) == 3
