"""LCR in SQL (DESIGN §3, docs/lcr.md): the four tables read as one snapshot, and every
change written as one transaction.

Every change takes the same path: read the current rows (one snapshot, on the primary),
compute the rows after the change, check all of them (``lcr_rows.check_rows`` plus the
column sizes), then write only what changes, in one transaction whose first statement is a
compare-and-set of ``lcr_version``. When another change got in between, that statement
matches nothing, nothing is written, and the change is computed again from the new rows.
So the tables only ever hold rows that ``LcrTable.build`` accepts, concurrent changes never
lose each other, and the version moves on every write: proxies reload when it moved.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from sipfleet.storage import schema
from sipfleet.storage.dsn import Kind
from sipfleet.storage.errors import AlreadyExists, InvalidLcr, StorageUnavailable
from sipfleet.storage.lcr_rows import (
    Gateway,
    GatewayCapability,
    LcrRows,
    Rule,
    RuleTarget,
    check_rows,
    describe_gateway,
    describe_rule,
)
from sipfleet.storage.model import GatewayEntry, LcrSnapshot, RuleEntry
from sipfleet.storage.schema import lcr_gw, lcr_gw_cap, lcr_rule, lcr_rule_target, lcr_version
from sipfleet.storage.statements import Statement, Step, StepResult, compile_for, dialect_for
from sipfleet.storage.timing import timed

WRITE_ATTEMPTS = 10  # compare-and-set rounds lost to concurrent changes before giving up
ROWS_PER_EXTRA_SECOND = 2000  # a large import gets this much more time than a query
INT_MAX = 2**31 - 1  # the INTEGER columns
VERSION_ROW = 1

_GATEWAY_COLUMNS = tuple(lcr_gw.c[field.name] for field in fields(Gateway))
_CAPABILITY_COLUMNS = tuple(lcr_gw_cap.c[name] for name in ("gw", "capability", "prefix"))
_RULE_COLUMNS = tuple(lcr_rule.c[field.name] for field in fields(Rule))
_TARGET_COLUMNS = tuple(
    lcr_rule_target.c[name] for name in ("rule", "gw", "capability", "priority", "weight")
)


def _p(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _insert(table: sa.Table, columns: Sequence[sa.Column[Any]]) -> sa.Insert:
    return sa.insert(table).values({column.name: _p(column.name) for column in columns})


def _insert_ignore(kind: Kind, table: sa.Table, values: dict[str, Any]) -> Any:
    """INSERT that does nothing when the row is there already."""
    if kind == "mysql":
        return mysql.insert(table).values(values).prefix_with("IGNORE")
    dialect_insert = sqlite.insert if kind == "sqlite" else postgresql.insert
    return dialect_insert(table).values(values).on_conflict_do_nothing()


class LcrStatements:
    """The LCR statements of one dialect, compiled once."""

    def __init__(self, kind: Kind) -> None:
        dialect = dialect_for(kind)

        def c(element: Any) -> Statement:
            return compile_for(element, dialect)

        # Loading: table order is insertion order, so a load gives back what was written.
        self.gateways = c(sa.select(*_GATEWAY_COLUMNS).order_by(lcr_gw.c.id))
        self.capabilities = c(sa.select(*_CAPABILITY_COLUMNS).order_by(lcr_gw_cap.c.id))
        self.rules = c(sa.select(*_RULE_COLUMNS).order_by(lcr_rule.c.id))
        self.targets = c(sa.select(*_TARGET_COLUMNS).order_by(lcr_rule_target.c.id))
        this_row = lcr_version.c.id == sa.literal_column(str(VERSION_ROW))
        self.version = c(sa.select(lcr_version.c.version).where(this_row))
        # The version row may be missing (a new or emptied database): it counts as 0.
        self.version_row = c(
            _insert_ignore(
                kind,
                lcr_version,
                {"id": sa.literal_column(str(VERSION_ROW)), "version": sa.literal_column("0")},
            )
        )
        bumped = {"version": lcr_version.c.version + sa.literal_column("1")}
        self.version_cas = c(
            sa.update(lcr_version)
            .where(this_row, lcr_version.c.version == _p("expected"))
            .values(bumped)
        )
        self.version_bump = c(sa.update(lcr_version).where(this_row).values(bumped))
        self.clear = [c(sa.delete(t)) for t in (lcr_rule_target, lcr_gw_cap, lcr_rule, lcr_gw)]
        self.insert_gateway = c(_insert(lcr_gw, _GATEWAY_COLUMNS))
        self.insert_capability = c(_insert(lcr_gw_cap, _CAPABILITY_COLUMNS))
        self.insert_rule = c(_insert(lcr_rule, _RULE_COLUMNS))
        self.insert_target = c(_insert(lcr_rule_target, _TARGET_COLUMNS))
        self.remove_gateway = [
            c(sa.delete(table).where(table.c.gw == _p("gw")))
            for table in (lcr_rule_target, lcr_gw_cap)
        ] + [c(sa.delete(lcr_gw).where(lcr_gw.c.name == _p("gw")))]
        self.set_gateway_enabled = c(
            sa.update(lcr_gw).where(lcr_gw.c.name == _p("gw")).values(enabled=_p("enabled"))
        )
        self.remove_rule = [
            c(sa.delete(lcr_rule_target).where(lcr_rule_target.c.rule == _p("rule"))),
            c(sa.delete(lcr_rule).where(lcr_rule.c.id == _p("rule"))),
        ]
        target_key = sa.and_(
            lcr_rule_target.c.rule == _p("rule"),
            lcr_rule_target.c.gw == _p("gw"),
            lcr_rule_target.c.capability == _p("capability"),
        )
        self.remove_target = c(sa.delete(lcr_rule_target).where(target_key))


# --- rows <-> parameters ----------------------------------------------------------------


def _gateway_params(gateway: Gateway) -> dict[str, Any]:
    return {
        "name": gateway.name,
        "host": gateway.host,
        "port": gateway.port,
        "transport": gateway.transport or None,
        "strip": gateway.strip,
        "enabled": gateway.enabled,
        "trusted": gateway.trusted,
    }


def _capability_params(row: GatewayCapability) -> dict[str, Any]:
    return {"gw": row.gw, "capability": row.capability, "prefix": row.prefix}


def _rule_params(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "prefix": rule.prefix,
        "from_uri": rule.from_uri or None,
        "request_uri": rule.request_uri or None,
        "stopper": rule.stopper,
        "enabled": rule.enabled,
    }


def _target_params(target: RuleTarget) -> dict[str, Any]:
    return {
        "rule": target.rule,
        "gw": target.gw,
        "capability": target.capability,
        "priority": target.priority,
        "weight": target.weight,
    }


def _rows_from(results: Sequence[Sequence[Sequence[Any]]]) -> LcrRows:
    gateways, capabilities, rules, targets = results
    return LcrRows(
        tuple(
            Gateway(name, host, port, transport, int(strip), bool(enabled), bool(trusted))
            for name, host, port, transport, strip, enabled, trusted in gateways
        ),
        tuple(GatewayCapability(gw, int(bits), prefix) for gw, bits, prefix in capabilities),
        tuple(
            Rule(int(id_), prefix, from_uri, request_uri, bool(stopper), bool(enabled))
            for id_, prefix, from_uri, request_uri, stopper, enabled in rules
        ),
        tuple(
            RuleTarget(int(rule), gw, int(bits), int(priority), int(weight))
            for rule, gw, bits, priority, weight in targets
        ),
    )


def normalized(rows: LcrRows) -> LcrRows:
    """The rows as storage keeps them: empty optional texts are NULL (None)."""
    return replace(
        rows,
        gateways=tuple(replace(g, transport=g.transport or None) for g in rows.gateways),
        rules=tuple(
            replace(r, from_uri=r.from_uri or None, request_uri=r.request_uri or None)
            for r in rows.rules
        ),
    )


# --- checks the columns add to lcr_rows.check_rows ---------------------------------------


def column_problems(rows: LcrRows) -> list[str]:
    """What the columns cannot hold, naming the entry and field like ``check_rows``; and,
    as the file demands (so that an export imports again), a capability per gateway."""
    problems: list[str] = []
    carriers = {row.gw for row in rows.capabilities}

    def too_long(entry: str, field: str, value: str | None, limit: int) -> None:
        if value is not None and len(value) > limit:
            problems.append(f"{entry}: {field}: longer than {limit} characters")

    def too_big(entry: str, field: str, value: int) -> None:
        if value > INT_MAX:
            problems.append(f"{entry}: {field}: {value} is more than {INT_MAX}")

    for gateway in rows.gateways:
        entry = describe_gateway(gateway.name)
        too_long(entry, "name", gateway.name, schema.GW_NAME_LEN)
        too_long(entry, "host", gateway.host, schema.SHORT_TEXT_LEN)
        too_big(entry, "strip", gateway.strip)
        if gateway.name not in carriers:
            problems.append(f"{entry}: caps: missing (list what the gateway can carry)")
    for row in rows.capabilities:
        entry = f"{describe_gateway(row.gw)}: capability {row.capability}"
        too_long(entry, "prefix", row.prefix, schema.LCR_PREFIX_LEN)
    for rule in rows.rules:
        entry = describe_rule(rule)
        if not 1 <= rule.id <= INT_MAX:
            problems.append(f"{entry}: id: {rule.id} is not between 1 and {INT_MAX}")
        too_long(entry, "prefix", rule.prefix, schema.LCR_PREFIX_LEN)
    for target in rows.targets:
        entry = f"rule {target.rule}: target gw {_quote(target.gw)}"
        too_big(entry, "priority", target.priority)
        too_big(entry, "weight", target.weight)
    return problems


def merge_rows(current: LcrRows, update: LcrRows) -> LcrRows:
    """``update`` laid over ``current``: its gateways replace those of the same name (with
    all their capabilities), its rules those of the same id (with all their targets);
    everything else stays as it is."""
    names = {gateway.name for gateway in update.gateways}
    ids = {rule.id for rule in update.rules}
    return LcrRows(
        tuple(g for g in current.gateways if g.name not in names) + update.gateways,
        tuple(c for c in current.capabilities if c.gw not in names) + update.capabilities,
        tuple(r for r in current.rules if r.id not in ids) + update.rules,
        tuple(t for t in current.targets if t.rule not in ids) + update.targets,
    )


# --- the store ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Change:
    """The rows after a change (all of them are checked) and the statements that make it."""

    rows: LcrRows
    steps: list[Step]
    size: int = 0  # rows written, for the time limit


class _Database(Protocol):
    """What the store needs of ``sql._Gated``: queries through the in-flight gate."""

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int: ...

    async def fetch(
        self, stmt: Statement, params: Mapping[str, Any], replica: bool = False
    ) -> list[Sequence[Any]]: ...

    async def transaction(
        self,
        steps: Sequence[Step],
        *,
        snapshot: bool = False,
        replica: bool = False,
        extra_time: float = 0.0,
    ) -> list[StepResult] | None: ...


class SqlLcr:
    """The ``LcrStore`` of every backend (see ``interface.LcrStore``)."""

    def __init__(self, db: _Database, kind: Kind) -> None:
        self._db = db
        self.sql = LcrStatements(kind)

    # -- reading

    @timed("lcr.version")
    async def version(self, *, replica: bool = True) -> int:
        rows = await self._db.fetch(self.sql.version, {}, replica)
        return int(rows[0][0]) if rows else 0

    @timed("lcr.load")
    async def load(self, *, replica: bool = True) -> LcrSnapshot:
        snapshot, _ = await self._load(replica)
        return snapshot

    async def _load(self, replica: bool) -> tuple[LcrSnapshot, bool]:
        """The snapshot, and whether the version row exists."""
        sql = self.sql
        reads = [sql.version, sql.gateways, sql.capabilities, sql.rules, sql.targets]
        results = await self._db.transaction(
            [Step(stmt, fetch=True) for stmt in reads], snapshot=True, replica=replica
        )
        assert results is not None  # no guard step
        fetched = [result for result in results if not isinstance(result, int)]
        version_rows, *tables = fetched
        version = int(version_rows[0][0]) if version_rows else 0
        return LcrSnapshot(_rows_from(tables), version), bool(version_rows)

    async def _create_version_row(self) -> None:
        """Its own statement, never inside a write: on MariaDB the shared lock an INSERT
        IGNORE takes on the existing row would deadlock two writers that then update it."""
        await self._db.execute(self.sql.version_row, {})

    @timed("lcr.list_gateways")
    async def list_gateways(self) -> list[GatewayEntry]:
        rows = (await self.load(replica=False)).rows
        return [
            GatewayEntry(g, tuple(c for c in rows.capabilities if c.gw == g.name))
            for g in sorted(rows.gateways, key=lambda g: g.name)
        ]

    @timed("lcr.list_rules")
    async def list_rules(self) -> list[RuleEntry]:
        rows = (await self.load(replica=False)).rows
        return [
            RuleEntry(r, tuple(t for t in rows.targets if t.rule == r.id))
            for r in sorted(rows.rules, key=lambda r: r.id)
        ]

    # -- writing

    @timed("lcr.bump_version")
    async def bump_version(self) -> int:
        sql = self.sql
        steps = [Step(sql.version_bump, guard=True), Step(sql.version, fetch=True)]
        results = await self._db.transaction(steps)
        if results is None:  # no version row yet
            await self._create_version_row()
            results = await self._db.transaction(steps)
        assert results is not None
        assert not isinstance(results[1], int)
        return int(results[1][0][0])

    @timed("lcr.replace_all")
    async def replace_all(self, rows: LcrRows) -> int:
        return await self._write_always(lambda current: self._rewrite(normalized(rows)))

    @timed("lcr.merge")
    async def merge(self, rows: LcrRows) -> int:
        return await self._write_always(
            lambda current: self._rewrite(merge_rows(current.rows, normalized(rows)))
        )

    @timed("lcr.add_gateway")
    async def add_gateway(self, gateway: Gateway, capabilities: Sequence[GatewayCapability]) -> int:
        def change(current: LcrSnapshot) -> _Change:
            rows = current.rows
            if any(g.name == gateway.name for g in rows.gateways):
                raise AlreadyExists(f"{describe_gateway(gateway.name)}: exists already")
            new = normalized(LcrRows((gateway,), tuple(capabilities)))
            return _Change(
                replace(
                    rows,
                    gateways=rows.gateways + new.gateways,
                    capabilities=rows.capabilities + new.capabilities,
                ),
                self._inserts(new),
            )

        return await self._write_always(change)

    @timed("lcr.remove_gateway")
    async def remove_gateway(self, name: str, *, with_targets: bool = False) -> int | None:
        """The new version; None when there is no such gateway. A gateway that rules still
        use is refused (``InvalidLcr`` naming them) unless ``with_targets``."""

        def change(current: LcrSnapshot) -> _Change | None:
            rows = current.rows
            if not any(g.name == name for g in rows.gateways):
                return None
            users = sorted({t.rule for t in rows.targets if t.gw == name})
            if users and not with_targets:
                rules = {r.id: r for r in rows.rules}
                named = ", ".join(
                    describe_rule(rules[i]) if i in rules else f"rule {i}" for i in users
                )
                raise InvalidLcr([f"{describe_gateway(name)}: still a target of {named}"])
            after = LcrRows(
                tuple(g for g in rows.gateways if g.name != name),
                tuple(c for c in rows.capabilities if c.gw != name),
                rows.rules,
                tuple(t for t in rows.targets if t.gw != name),
            )
            return _Change(after, [Step(s, ({"gw": name},)) for s in self.sql.remove_gateway])

        return await self._write(change)

    @timed("lcr.set_gateway_enabled")
    async def set_gateway_enabled(self, name: str, enabled: bool) -> int | None:
        """The new version; None when there is no such gateway."""

        def change(current: LcrSnapshot) -> _Change | None:
            rows = current.rows
            if not any(g.name == name for g in rows.gateways):
                return None
            gateways = tuple(
                replace(g, enabled=enabled) if g.name == name else g for g in rows.gateways
            )
            params = ({"gw": name, "enabled": enabled},)
            return _Change(
                replace(rows, gateways=gateways), [Step(self.sql.set_gateway_enabled, params)]
            )

        return await self._write(change)

    @timed("lcr.add_rule")
    async def add_rule(
        self, rule: Rule, targets: Sequence[RuleTarget], *, assign_id: bool = False
    ) -> Rule:
        """Add a rule with its targets; with ``assign_id`` the rule gets the next free id
        (its targets' ``rule`` follow), else ``rule.id``. Returns the rule as stored."""
        added: list[Rule] = []

        def change(current: LcrSnapshot) -> _Change:
            rows = current.rows
            rule_id = max((r.id for r in rows.rules), default=0) + 1 if assign_id else rule.id
            if any(r.id == rule_id for r in rows.rules):
                raise AlreadyExists(f"rule {rule_id}: exists already")
            new = normalized(
                LcrRows(
                    rules=(replace(rule, id=rule_id),),
                    targets=tuple(replace(t, rule=rule_id) for t in targets),
                )
            )
            added[:] = new.rules
            return _Change(
                replace(rows, rules=rows.rules + new.rules, targets=rows.targets + new.targets),
                self._inserts(new),
            )

        await self._write(change)
        return added[0]

    @timed("lcr.remove_rule")
    async def remove_rule(self, rule_id: int) -> int | None:
        """The new version; None when there is no such rule. Its targets go with it."""

        def change(current: LcrSnapshot) -> _Change | None:
            rows = current.rows
            if not any(r.id == rule_id for r in rows.rules):
                return None
            after = replace(
                rows,
                rules=tuple(r for r in rows.rules if r.id != rule_id),
                targets=tuple(t for t in rows.targets if t.rule != rule_id),
            )
            return _Change(after, [Step(s, ({"rule": rule_id},)) for s in self.sql.remove_rule])

        return await self._write(change)

    @timed("lcr.add_target")
    async def add_target(self, target: RuleTarget) -> int:
        def change(current: LcrSnapshot) -> _Change:
            rows = current.rows
            if not any(r.id == target.rule for r in rows.rules):
                raise InvalidLcr([f"rule {target.rule}: does not exist"])
            return _Change(
                replace(rows, targets=(*rows.targets, target)),
                self._inserts(LcrRows(targets=(target,))),
            )

        return await self._write_always(change)

    @timed("lcr.remove_target")
    async def remove_target(self, rule_id: int, gw: str, capability: int | None = None) -> int:
        """Remove the rule's targets of gateway ``gw`` (only the one of ``capability``
        when given); returns how many went (0: nothing matched, nothing written)."""
        removed: list[RuleTarget] = []

        def change(current: LcrSnapshot) -> _Change | None:
            rows = current.rows

            def matches(t: RuleTarget) -> bool:
                return (t.rule, t.gw) == (rule_id, gw) and capability in (None, t.capability)

            removed[:] = [t for t in rows.targets if matches(t)]
            if not removed:
                return None
            keys = [{"rule": t.rule, "gw": t.gw, "capability": t.capability} for t in removed]
            return _Change(
                replace(rows, targets=tuple(t for t in rows.targets if not matches(t))),
                [Step(self.sql.remove_target, keys)],
            )

        await self._write(change)
        return len(removed)

    # -- the write path

    def _rewrite(self, rows: LcrRows) -> _Change:
        clear = [Step(stmt) for stmt in self.sql.clear]
        size = sum(map(len, (rows.gateways, rows.capabilities, rows.rules, rows.targets)))
        return _Change(rows, clear + self._inserts(rows), size)

    def _inserts(self, rows: LcrRows) -> list[Step]:
        sql = self.sql
        return [
            Step(sql.insert_gateway, [_gateway_params(g) for g in rows.gateways]),
            Step(sql.insert_capability, [_capability_params(c) for c in rows.capabilities]),
            Step(sql.insert_rule, [_rule_params(r) for r in rows.rules]),
            Step(sql.insert_target, [_target_params(t) for t in rows.targets]),
        ]

    async def _write_always(self, plan: Callable[[LcrSnapshot], _Change]) -> int:
        version = await self._write(plan)
        assert version is not None  # the plan always changes something
        return version

    async def _write(self, plan: Callable[[LcrSnapshot], _Change | None]) -> int | None:
        for attempt in range(WRITE_ATTEMPTS):
            if attempt:  # lost to another writer: let it finish, then start over
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
            current, has_version_row = await self._load(replica=False)
            if not has_version_row:
                await self._create_version_row()
            change = plan(current)
            if change is None:
                return None
            problems = check_rows(change.rows) + column_problems(change.rows)
            if problems:
                raise InvalidLcr(problems)
            guard = Step(self.sql.version_cas, ({"expected": current.version},), guard=True)
            steps = [guard, *change.steps]
            done = await self._db.transaction(steps, extra_time=change.size / ROWS_PER_EXTRA_SECOND)
            if done is not None:
                return current.version + 1
        raise StorageUnavailable(
            f"LCR data changed under this write {WRITE_ATTEMPTS} times in a row; try again"
        )
