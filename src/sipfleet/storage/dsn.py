"""Database URLs: parsing, the embedded default, and which ones a node uses.

Forms: ``sqlite:///abs/path.db`` (or ``sqlite:relative.db``), ``mysql://user:pw@host:port/db``
(also ``mariadb://``; ``?unix_socket=PATH``), ``postgresql://user:pw@host:port/db`` (also
``postgres://``; ``?host=DIR`` for a Unix socket directory). User and password may be
percent-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from sipfleet.storage.errors import DsnError

if TYPE_CHECKING:
    from sipfleet.config import Config

Kind = Literal["sqlite", "mysql", "postgresql"]
SCHEMES: dict[str, Kind] = {
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}
DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432}
SOCKET_OPTION = {"mysql": "unix_socket", "postgresql": "host"}
EMBEDDED_FILE = "sipfleet.db"


@dataclass(frozen=True, slots=True)
class Dsn:
    kind: Kind
    path: Path | None = None  # sqlite
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    socket: str = ""  # mysql: the socket file; postgresql: the socket directory

    @classmethod
    def parse(cls, text: str, setting: str = "database") -> Dsn:
        scheme, sep, rest = text.partition(":")
        kind = SCHEMES.get(scheme.lower()) if sep else None
        if kind is None:
            raise DsnError(
                f"{setting}: {redact(text)!r} is not a database URL "
                "(sqlite:///path, mysql://user:pw@host/db, postgresql://user:pw@host/db)"
            )
        if kind == "sqlite":
            return cls._sqlite(rest, setting)
        return cls._network(kind, text, setting)

    @classmethod
    def _sqlite(cls, rest: str, setting: str) -> Dsn:
        raw = rest[2:] if rest.startswith("//") else rest
        if not raw or raw.endswith("/") or "?" in raw:
            raise DsnError(f"{setting}: sqlite URL needs a file path, e.g. sqlite:///var/db.db")
        return cls("sqlite", path=Path(raw).resolve())

    @classmethod
    def _network(cls, kind: Kind, text: str, setting: str) -> Dsn:
        parts = urlsplit(text)
        try:
            port = parts.port or DEFAULT_PORTS[kind]
        except ValueError:
            raise DsnError(f"{setting}: bad port in {redact(text)!r}") from None
        database = parts.path.lstrip("/")
        if not database or "/" in database:
            raise DsnError(f"{setting}: {redact(text)!r} names no database (…/DBNAME)")
        socket = ""
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key != SOCKET_OPTION[kind]:
                raise DsnError(f"{setting}: unknown URL option {key!r}")
            socket = value
        return cls(
            kind,
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=unquote(database),
            socket=socket,
        )

    def __str__(self) -> str:
        """The URL without its password: safe for logs and messages."""
        if self.path is not None:
            return f"sqlite://{self.path}"
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        return f"{self.kind}://{user}{self.host}:{self.port}/{self.database}"

    def sqlalchemy_url(self) -> str:
        """For Alembic: the same drivers as at run time (asyncmy, asyncpg; sqlite3)."""
        if self.path is not None:
            return f"sqlite:///{self.path}"
        driver = {"mysql": "mysql+asyncmy", "postgresql": "postgresql+asyncpg"}[self.kind]
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        url = f"{driver}://{auth}@{self.host}:{self.port}/{quote(self.database, safe='')}"
        if self.socket:
            url += f"?{SOCKET_OPTION[self.kind]}={quote(self.socket, safe='/')}"
        return url


def redact(text: str) -> str:
    """A URL as the operator wrote it, password replaced."""
    try:
        parts = urlsplit(text)
        if parts.password:
            return text.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        pass
    return text


@dataclass(frozen=True, slots=True)
class Dsns:
    """Where a node writes (the primary) and reads (its replicas, else the primary)."""

    write: Dsn
    reads: tuple[Dsn, ...]

    @property
    def has_replica(self) -> bool:
        return any(read != self.write for read in self.reads)


def embedded_dsn(data_dir: Path) -> Dsn:
    """The SQLite database of `sipfleet up`: ``<node.data_dir>/sipfleet.db``."""
    return Dsn("sqlite", path=(data_dir / EMBEDDED_FILE).resolve())


def dsns_from_config(config: Config, override: str | None = None) -> Dsns:
    """``override`` (the CLI's --db) wins; then database.write/read; then the embedded file."""
    if override:
        dsn = Dsn.parse(override, "--db")
        return Dsns(dsn, (dsn,))
    database = config.database
    if database.write:
        write = Dsn.parse(database.write, "database.write")
    else:
        write = embedded_dsn(config.node.data_dir)
    reads = tuple(Dsn.parse(text, f"database.read[{i}]") for i, text in enumerate(database.read))
    return Dsns(write, reads or (write,))
