"""``open_storage``: the one way roles and the CLI get a ``Storage``."""

from __future__ import annotations

from sipfleet.config import Config
from sipfleet.storage.dsn import Dsn, Dsns, dsns_from_config
from sipfleet.storage.errors import DsnError
from sipfleet.storage.interface import Storage
from sipfleet.storage.network import ReadFallback
from sipfleet.storage.sql import Executor, SqlStorage

DEFAULT_QUERY_TIMEOUT = 5.0


def open_storage(
    source: Config | Dsns | Dsn | str,
    *,
    pool_size: int | None = None,
    max_in_flight: int | None = None,
    retry_primary_on_miss: bool | None = None,
    read_fallback: ReadFallback | None = None,
    query_timeout: float = DEFAULT_QUERY_TIMEOUT,
) -> Storage:
    """A storage for a node's config (``[database]``, else the embedded SQLite under
    ``node.data_dir``), a ``Dsns`` pair, one ``Dsn`` or a URL. Connects lazily: a database
    that is down at start-up only makes the first queries raise ``StorageUnavailable``.
    Keyword arguments override the config."""
    if isinstance(source, Config):
        database = source.database
        dsns = dsns_from_config(source)
        pool_size = pool_size or database.pool_size
        max_in_flight = max_in_flight or database.max_in_flight
        if retry_primary_on_miss is None:
            retry_primary_on_miss = database.retry_primary_on_miss
        read_fallback = read_fallback or database.read_fallback
    elif isinstance(source, Dsns):
        dsns = source
    else:
        dsn = source if isinstance(source, Dsn) else Dsn.parse(source)
        dsns = Dsns(dsn, (dsn,))
    executor = _executor(dsns, pool_size or 8, query_timeout, read_fallback or "primary")
    return SqlStorage(
        executor,
        retry_primary_on_miss=True if retry_primary_on_miss is None else retry_primary_on_miss,
        max_in_flight=max_in_flight or 256,
    )


def _executor(
    dsns: Dsns, pool_size: int, query_timeout: float, read_fallback: ReadFallback
) -> Executor:
    kind = dsns.write.kind
    for i, read in enumerate(dsns.reads):
        if read.kind != kind:
            raise DsnError(f"database.read[{i}]: a {read.kind} replica of a {kind} primary")
    if kind == "sqlite":
        from sipfleet.storage.sqlite import SqliteExecutor

        return SqliteExecutor(dsns)
    try:
        if kind == "mysql":
            from sipfleet.storage.mysql import MysqlExecutor

            return MysqlExecutor(
                dsns,
                pool_size=pool_size,
                query_timeout=query_timeout,
                read_fallback=read_fallback,
            )
        from sipfleet.storage.postgres import PostgresExecutor

        return PostgresExecutor(
            dsns, pool_size=pool_size, query_timeout=query_timeout, read_fallback=read_fallback
        )
    except ImportError as exc:
        extra = "mysql" if kind == "mysql" else "postgres"
        raise DsnError(
            f"database.write: {kind} needs the {exc.name} driver: pip install 'sipfleet[{extra}]'"
        ) from None
