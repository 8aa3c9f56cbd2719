"""A save the database rolls back in a conflict is run again and counted (network.py).

On one MariaDB the conflict is a lock wait timeout (1205): another session holds the
AOR's row. (Galera's certification conflicts, 1213, take the same path; they are met on a
real three-node cluster in tests/integration/test_galera.py.)
"""

from __future__ import annotations

import asyncio

import asyncmy
import pytest

from sipfleet.storage import Aor, BindingUpdate, Dsn, open_storage
from sipfleet.storage.timing import STATEMENTS
from tests.conftest import new_database
from tests.dbservers import DbServer
from tests.storage.conftest import migrate

pytestmark = pytest.mark.mysql

NOW = 1_700_000_000
ALICE = Aor("alice", "example.com")


def registration(cseq: int) -> list[BindingUpdate]:
    return [BindingUpdate("sip:alice@192.0.2.1", NOW + 600, "call-1", cseq)]


def conflicts() -> int:
    return STATEMENTS.errors.get(("location.save", "conflict"), 0)


async def test_a_save_that_waited_out_a_lock_is_run_again_and_counted(
    mariadb_server: DbServer,
) -> None:
    dsn = new_database(mariadb_server, "conflict")
    migrate(dsn)
    mariadb_server.sql("SET GLOBAL innodb_lock_wait_timeout = 1")  # new sessions: a 1 s wait
    storage = open_storage(dsn)
    target = Dsn.parse(dsn)
    holder = await asyncmy.connect(
        host=target.host, port=target.port, user=target.user, database=target.database
    )
    try:
        await storage.location.save(ALICE, registration(1), now=NOW, max_contacts=5)
        async with holder.cursor() as cursor:
            await cursor.execute("START TRANSACTION")
            await cursor.execute("SELECT id FROM location WHERE username = 'alice' FOR UPDATE")
        before = conflicts()
        save = asyncio.create_task(
            storage.location.save(ALICE, registration(2), now=NOW, max_contacts=5)
        )
        async with asyncio.timeout(10):  # the first try gives up on the lock after 1 s
            while conflicts() == before:
                await asyncio.sleep(0.05)
        await holder.rollback()  # the lock is free: the retry goes through
        async with asyncio.timeout(10):
            (binding,) = await save
        assert binding.cseq == 2
        assert conflicts() >= before + 1
    finally:
        holder.close()
        await storage.close()
        mariadb_server.sql("SET GLOBAL innodb_lock_wait_timeout = DEFAULT")
