"""The everyday statements, built once from the schema and compiled per dialect at start-up.

Each ``Statement`` holds the driver's SQL text (``?`` for sqlite3, ``%s`` for asyncmy,
``$n`` for asyncpg) and the order of its named parameters. Only the bindings save, whose
rules do not fit a portable statement, is written per backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from sipfleet.storage.dsn import Kind
from sipfleet.storage.model import RouteBinding
from sipfleet.storage.schema import (
    DOMAIN_LEN,
    USERNAME_LEN,
    lb_target,
    lb_target_health,
    location,
    subscriber,
    usr_preferences,
)

# The order of Binding's fields: every column but flow_key (it follows from two others).
BINDING_COLUMNS = tuple(col for col in location.c if col.name != "flow_key")
BINDING_KEY = ["username", "domain", "contact", "flow_key"]  # location_binding_key
# What the proxy reads to route a call, in the order of RouteBinding's fields.
ROUTE_COLUMNS = tuple(location.c[name] for name in RouteBinding._fields)
LB_TARGET_COLUMNS = (
    lb_target.c.id,
    lb_target.c.pool,
    lb_target.c.uri,
    lb_target.c.weight,
    lb_target.c.state,
)
LB_HEALTH_COLUMNS = (
    lb_target_health.c.lb,
    lb_target_health.c.pool,
    lb_target_health.c.uri,
    lb_target_health.c.health,
    lb_target_health.c.changed,
    lb_target_health.c.checked,
)
SUBSCRIBER_COLUMNS = (
    subscriber.c.username,
    subscriber.c.domain,
    subscriber.c.ha1,
    subscriber.c.ha1_sha256,
)


# Subscribers by a list of (username, domain) keys, joined to their unique key. Written
# per dialect from constants only: PostgreSQL takes two arrays ($1 users, $2 domains),
# the others one JSON array of [user, domain] pairs. Measured per batch of 64 keys, these
# cost MariaDB half and PostgreSQL a sixth of an OR of 64 indexed equalities (a JSON join
# on PostgreSQL is planned as a hash join over the whole table). MariaDB's JSON_TABLE
# columns take the column's character set and binary collation (else the server's
# default, latin1 on some), so that the comparison is exact and the key's index serves.
BINARY_TEXT = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
# A JSON_TABLE joined to a table reaches each key's rows by the table's unique key: the
# plan EXPLAIN shows. Left to itself, MariaDB ran executions of the prepared batch joins
# as a block nested loop, rows compared pair by pair in a join buffer (JOIN_CACHE_BNL;
# under load MariaDB's CPU a REGISTER doubled, docs/benchmarks.md, session 18).
BY_AOR = "FORCE INDEX (location_binding_key)"
BY_ACCOUNT = "FORCE INDEX (subscriber_account_key)"
_SUBSCRIBER_FIELDS = "s.username, s.domain, s.ha1, s.ha1_sha256"
_SUBSCRIBERS_BY_KEYS: dict[Kind, tuple[str, tuple[str, ...]]] = {
    "postgresql": (
        f"SELECT {_SUBSCRIBER_FIELDS} FROM subscriber s WHERE (s.username, s.domain) IN "  # noqa: S608
        "(SELECT * FROM unnest($1::varchar[], $2::varchar[]))",
        ("users", "domains"),
    ),
    "mysql": (
        f"SELECT {_SUBSCRIBER_FIELDS} FROM JSON_TABLE(%s, '$[*]' COLUMNS ("  # noqa: S608
        f"u VARCHAR({USERNAME_LEN}) {BINARY_TEXT} PATH '$[0]', "
        f"d VARCHAR({DOMAIN_LEN}) {BINARY_TEXT} PATH '$[1]')) AS k "
        f"JOIN subscriber s {BY_ACCOUNT} ON s.username = k.u AND s.domain = k.d",
        ("keys",),
    ),
    "sqlite": (
        f"SELECT {_SUBSCRIBER_FIELDS} FROM json_each(?) AS k JOIN subscriber s "  # noqa: S608
        "ON s.username = json_extract(k.value, '$[0]') "
        "AND s.domain = json_extract(k.value, '$[1]')",
        ("keys",),
    ),
}


# The proxy's lookups by a list of (username, domain, now) keys: each key's unexpired
# bindings (``expires > now``, its own now) with the ROUTE_COLUMNS, led by the key's
# position in the list (from 1), in the forking order of ``lookup_routes`` within each key.
# The same joins as the subscribers' above, on the prefix of location_binding_key; the
# rows are matched back to their callers by position, so that a key matches exactly the
# rows the single statement would (the database compares, in the column's collation).
_ROUTE_FIELDS = ", ".join(f"l.{name}" for name in RouteBinding._fields)
_ROUTE_ORDER = "COALESCE(l.q, 1.0) DESC, l.id"  # _BY_PREFERENCE
_ROUTES_BY_KEYS: dict[Kind, tuple[str, tuple[str, ...]]] = {
    "postgresql": (
        f"SELECT k.i, {_ROUTE_FIELDS} FROM unnest($1::varchar[], $2::varchar[], $3::bigint[]) "  # noqa: S608
        "WITH ORDINALITY AS k(u, d, n, i) "
        "JOIN location l ON l.username = k.u AND l.domain = k.d AND l.expires > k.n "
        f"ORDER BY k.i, {_ROUTE_ORDER}",
        ("users", "domains", "nows"),
    ),
    "mysql": (
        f"SELECT k.i, {_ROUTE_FIELDS} FROM JSON_TABLE(%s, '$[*]' COLUMNS ("  # noqa: S608
        "i FOR ORDINALITY, "
        f"u VARCHAR({USERNAME_LEN}) {BINARY_TEXT} PATH '$[0]', "
        f"d VARCHAR({DOMAIN_LEN}) {BINARY_TEXT} PATH '$[1]', "
        "n BIGINT PATH '$[2]')) AS k "
        f"JOIN location l {BY_AOR} ON l.username = k.u AND l.domain = k.d AND l.expires > k.n "
        f"ORDER BY k.i, {_ROUTE_ORDER}",
        ("keys",),
    ),
    "sqlite": (
        f"SELECT k.key + 1, {_ROUTE_FIELDS} FROM json_each(?) AS k JOIN location l "  # noqa: S608
        "ON l.username = json_extract(k.value, '$[0]') "
        "AND l.domain = json_extract(k.value, '$[1]') "
        "AND l.expires > json_extract(k.value, '$[2]') "
        f"ORDER BY k.key, {_ROUTE_ORDER}",
        ("keys",),
    ),
}


def _key_arrays(keys: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """The keys as PostgreSQL's parameters: one array per field (users, domains, nows)."""
    arrays = {"users": [key[0] for key in keys], "domains": [key[1] for key in keys]}
    if keys and len(keys[0]) > 2:
        arrays["nows"] = [key[2] for key in keys]
    return arrays


def _key_json(keys: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """The keys as the others' parameter: one JSON array of [user, domain(, now)]."""
    return {"keys": json.dumps(keys)}


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    names: tuple[str, ...]

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.names)


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a ``transaction``: run once per parameter set (none: skipped).

    ``fetch``: the step's result is the rows it returned, else the rows it matched.
    ``guard``: when it matches no row, the transaction is rolled back and stops there
    (``transaction`` returns None): a compare-and-set that lost.
    """

    stmt: Statement
    params: Sequence[Mapping[str, Any]] = ({},)
    fetch: bool = False
    guard: bool = False


StepResult = list[Sequence[Any]] | int  # the rows a step fetched, or how many it matched


# Each driver's placeholder style: sqlite3 "?", asyncmy "%s", asyncpg "$1".
PARAMSTYLES: dict[Kind, tuple[type[Dialect], str]] = {
    "sqlite": (sqlite.dialect, "qmark"),
    "mysql": (mysql.dialect, "format"),
    "postgresql": (postgresql.dialect, "numeric_dollar"),
}


def dialect_for(kind: Kind) -> Dialect:
    dialect_class, paramstyle = PARAMSTYLES[kind]
    return dialect_class(paramstyle=paramstyle)  # type: ignore[call-arg]


def compile_for(element: ClauseElement, dialect: Dialect) -> Statement:
    compiled = cast(SQLCompiler, element.compile(dialect=dialect))
    return Statement(str(compiled), tuple(compiled.positiontup or ()))


def _p(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def _aor(table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.username == _p("username"), table.c.domain == _p("domain"))


def _live(aor: bool = True) -> sa.ColumnElement[bool]:
    unexpired = location.c.expires > _p("now", sa.BigInteger)
    return sa.and_(_aor(location), unexpired) if aor else unexpired


# Forking order: highest q first (no q counts as 1.0), then oldest binding first.
_BY_PREFERENCE = (sa.func.coalesce(location.c.q, sa.literal_column("1.0")).desc(), location.c.id)


def _upsert(
    kind: Kind, table: sa.Table, keys: list[str], values: dict[str, Any], keep: tuple[str, ...] = ()
) -> Any:
    """INSERT … ON CONFLICT / ON DUPLICATE KEY UPDATE of every column but the keys and ``keep``."""
    updated = [name for name in values if name not in keys and name not in keep]
    if kind == "mysql":
        my = mysql.insert(table).values(values)
        return my.on_duplicate_key_update({n: my.inserted[n] for n in updated})
    dialect_insert = sqlite.insert if kind == "sqlite" else postgresql.insert
    ins = dialect_insert(table).values(values)
    return ins.on_conflict_do_update(
        index_elements=keys, set_={n: ins.excluded[n] for n in updated}
    )


class Statements:
    """Every portable statement of one dialect, compiled once."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.dialect = dialect_for(kind)
        c = self._compile
        self.lookup = c(sa.select(*BINDING_COLUMNS).where(_live()).order_by(*_BY_PREFERENCE))
        self.lookup_routes = c(sa.select(*ROUTE_COLUMNS).where(_live()).order_by(*_BY_PREFERENCE))
        # Batched lookups (storage/batch.py ReadBatcher): every key in one parameter.
        self.lookup_routes_many = Statement(*_ROUTES_BY_KEYS[kind])
        self.all_bindings = c(
            sa.select(*BINDING_COLUMNS)
            .where(_live(aor=False))
            .order_by(location.c.username, location.c.domain, *_BY_PREFERENCE)
        )
        self.count = c(sa.select(sa.func.count()).select_from(location).where(_live()))
        self.remove_contact = c(
            sa.delete(location).where(_aor(location), location.c.contact == _p("contact"))
        )
        self.remove_all = c(sa.delete(location).where(_aor(location)))
        # Contact: * (RFC 3261 §10.3 step 6): a binding of the same Call-ID survives
        # unless the request's CSeq is higher.
        self.remove_all_checked = c(
            sa.delete(location).where(
                _aor(location),
                sa.not_(
                    sa.and_(
                        location.c.callid == _p("callid"),
                        location.c.cseq >= _p("cseq", sa.Integer),
                    )
                ),
            )
        )
        self.purge_expired = c(sa.delete(location).where(location.c.expires <= _p("now")))
        self.live_flows = c(
            sa.select(
                location.c.flow,
                sa.func.max(location.c.received),
                sa.func.max(location.c.socket),
                sa.func.max(location.c.expires),
            )
            .where(location.c.flow.is_not(None), _live(aor=False))
            .group_by(location.c.flow)
            .order_by(location.c.flow)
        )
        # Registrations per domain (the metrics): AORs with a live binding, and bindings.
        self.registrations_by_domain = c(
            sa.select(
                location.c.domain,
                sa.func.count(sa.distinct(location.c.username)),
                sa.func.count(),
            )
            .where(_live(aor=False))
            .group_by(location.c.domain)
            .order_by(location.c.domain)
        )
        self._subscriber_statements()
        self._preference_statements()
        self._lb_target_statements()
        self._sqlite_save_statements()

    def _compile(self, element: ClauseElement) -> Statement:
        return compile_for(element, self.dialect)

    def _subscriber_statements(self) -> None:
        c = self._compile
        self.subscriber_get = c(sa.select(*SUBSCRIBER_COLUMNS).where(_aor(subscriber)))
        # Batched reads (storage/batch.py ReadBatcher): every key in one parameter.
        self.subscriber_get_many = Statement(*_SUBSCRIBERS_BY_KEYS[self.kind])
        self.keys = _key_arrays if self.kind == "postgresql" else _key_json
        self.subscriber_list = c(
            sa.select(*SUBSCRIBER_COLUMNS).order_by(subscriber.c.domain, subscriber.c.username)
        )
        self.subscriber_list_domain = c(
            sa.select(*SUBSCRIBER_COLUMNS)
            .where(subscriber.c.domain == _p("domain"))
            .order_by(subscriber.c.username)
        )
        self.subscriber_add = c(
            sa.insert(subscriber).values(
                username=_p("username"),
                domain=_p("domain"),
                ha1=_p("ha1"),
                ha1_sha256=_p("ha1_sha256"),
            )
        )
        self.subscriber_set_ha1 = c(
            sa.update(subscriber)
            .where(_aor(subscriber))
            .values(ha1=_p("ha1"), ha1_sha256=_p("ha1_sha256"))
        )
        self.subscriber_remove = c(sa.delete(subscriber).where(_aor(subscriber)))

    def _preference_statements(self) -> None:
        c = self._compile
        table = usr_preferences
        self.preferences_get = c(
            sa.select(table.c.attribute, table.c.value)
            .where(_aor(table))
            .order_by(table.c.attribute)
        )
        self.preference_set = c(
            _upsert(
                self.kind,
                table,
                ["username", "domain", "attribute"],
                {
                    "username": _p("username"),
                    "domain": _p("domain"),
                    "attribute": _p("attribute"),
                    "value": _p("value"),
                    "last_modified": _p("now", sa.BigInteger),
                },
            )
        )
        self.preference_remove = c(
            sa.delete(table).where(_aor(table), table.c.attribute == _p("attribute"))
        )

    def _lb_target_statements(self) -> None:
        c = self._compile
        table = lb_target
        by_key = sa.and_(table.c.pool == _p("pool"), table.c.uri == _p("uri"))
        self.lb_list = c(sa.select(*LB_TARGET_COLUMNS).order_by(table.c.pool, table.c.id))
        self.lb_list_pool = c(
            sa.select(*LB_TARGET_COLUMNS).where(table.c.pool == _p("pool")).order_by(table.c.id)
        )
        self.lb_get = c(sa.select(*LB_TARGET_COLUMNS).where(by_key))
        self.lb_add = c(
            sa.insert(table).values(
                pool=_p("pool"), uri=_p("uri"), weight=_p("weight"), state=_p("state")
            )
        )
        self.lb_remove = c(sa.delete(table).where(by_key))
        self.lb_set_state = c(sa.update(table).where(by_key).values(state=_p("state")))
        health = lb_target_health
        self.lb_health_list = c(
            sa.select(*LB_HEALTH_COLUMNS).order_by(health.c.pool, health.c.uri, health.c.lb)
        )
        self.lb_health_set = c(
            _upsert(
                self.kind,
                health,
                ["lb", "pool", "uri"],
                {
                    "lb": _p("lb"),
                    "pool": _p("pool"),
                    "uri": _p("uri"),
                    "health": _p("health"),
                    "changed": _p("changed", sa.BigInteger),
                    "checked": _p("checked", sa.BigInteger),
                },
            )
        )
        # After a report: the rows of targets this LB no longer has (not checked now).
        self.lb_health_prune = c(
            sa.delete(health).where(
                health.c.lb == _p("lb"), health.c.checked < _p("checked", sa.BigInteger)
            )
        )
        self.lb_health_remove = c(
            sa.delete(health).where(health.c.pool == _p("pool"), health.c.uri == _p("uri"))
        )

    def _sqlite_save_statements(self) -> None:
        """The pieces of a save that SQLite runs inside one transaction."""
        c = self._compile
        self.remove_by_id = c(sa.delete(location).where(location.c.id == _p("id")))
        values = {col.name: _p(col.name, col.type) for col in location.c if col.name != "id"}
        # A refresh keeps the binding's id and first ruid.
        self.store_binding = c(_upsert(self.kind, location, BINDING_KEY, values, keep=("ruid",)))
