"""Alembic environment: run by `sipfleet db upgrade` (``sipfleet.storage.migrate``), which
hands over an open connection; ``-x db=URL`` serves a developer running alembic directly."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from sipfleet.storage.dsn import Dsn
from sipfleet.storage.schema import VERSION_TABLE, metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline(url: str) -> None:
    """``alembic upgrade --sql``: print the SQL for a DBA instead of running it."""
    context.configure(
        url=url, target_metadata=metadata, version_table=VERSION_TABLE, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db")
    if not url:
        raise SystemExit("use `sipfleet db upgrade`, or give alembic -x db=URL")
    dsn = Dsn.parse(url, "-x db")
    if context.is_offline_mode():
        run_offline(dsn.sqlalchemy_url())
    elif dsn.kind != "sqlite":
        raise SystemExit("for MariaDB/PostgreSQL use `sipfleet db upgrade --db URL`")
    else:
        with create_engine(dsn.sqlalchemy_url()).connect() as conn:
            run(conn)
            conn.commit()


main()
