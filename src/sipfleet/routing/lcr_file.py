"""The declarative LCR file (TOML) that ``sipfleet lcr import`` applies; see docs/lcr.md.

``parse_lcr_file(text)`` turns the file into ``LcrRows`` (the four tables) plus the file's
capability names, or raises ``LcrError`` listing every problem, each naming its entry and
field. Type problems are found here; ``lcr.check_rows`` then checks what the values mean, so
a file that parses is exactly a set of rows ``LcrTable.build`` accepts.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipfleet.routing.lcr import CAPABILITY_NAMES, LcrError, is_single_capability
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

_TOP_KEYS = frozenset({"capabilities", "gateway", "rule"})
_GATEWAY_KEYS = frozenset(
    {"name", "host", "port", "transport", "strip", "enabled", "trusted", "caps"}
)
_CAP_KEYS = frozenset({"cap", "prefix"})
_RULE_KEYS = frozenset({"id", "prefix", "from_uri", "request_uri", "stopper", "enabled", "target"})
_TARGET_KEYS = frozenset({"gw", "cap", "priority", "weight"})


@dataclass(frozen=True, slots=True)
class LcrFile:
    rows: LcrRows
    capability_names: Mapping[str, int] = field(default_factory=lambda: dict(CAPABILITY_NAMES))


def load_lcr_file(path: Path, *, check: bool = True) -> LcrFile:
    """Read and check an LCR file; LcrError (naming the file) on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LcrError([f"cannot read: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError:
        raise LcrError(["not UTF-8 text"], str(path)) from None
    return parse_lcr_file(text, str(path), check=check)


def parse_lcr_file(text: str, origin: str = "lcr file", *, check: bool = True) -> LcrFile:
    """``check=False`` reports only what the file itself gets wrong (types, unknown keys,
    names), not whether its rows make sense together: for a file that is merged into
    other rows (``sipfleet lcr import --merge``), which are then checked as a whole."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LcrError([f"not valid TOML: {exc}"], origin) from None
    reader = _Reader()
    result = reader.read(data)
    problems = reader.problems + (check_rows(result.rows) if check else [])
    if problems:
        raise LcrError(problems, origin)
    return result


class _Reader:
    """Reads the TOML data, noting type problems and substituting valid defaults.

    The defaults keep one bad field from producing follow-on problems elsewhere (a gateway
    with a bad port is still a known gateway for the rules that name it).
    """

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.names: dict[str, int] = dict(CAPABILITY_NAMES)

    def read(self, data: dict[str, Any]) -> LcrFile:
        self._unknown_keys("file", data, _TOP_KEYS)
        self._read_names(data.get("capabilities", {}))
        gateways: list[Gateway] = []
        caps: list[GatewayCapability] = []
        for index, entry in enumerate(self._tables("gateway", data.get("gateway", [])), 1):
            self._read_gateway(index, entry, gateways, caps)
        rules: list[Rule] = []
        targets: list[RuleTarget] = []
        for index, entry in enumerate(self._tables("rule", data.get("rule", [])), 1):
            self._read_rule(index, entry, rules, targets)
        rows = LcrRows(tuple(gateways), tuple(caps), tuple(rules), tuple(targets))
        return LcrFile(rows, dict(self.names))

    # -- sections

    def _read_names(self, table: object) -> None:
        if not isinstance(table, dict):
            self.problems.append("capabilities: must be a table of name = bit")
            return
        for name, bit in table.items():
            entry = f"capabilities: {name}"
            if not isinstance(bit, int) or isinstance(bit, bool) or not is_single_capability(bit):
                self.problems.append(f"{entry}: {_show(bit)} is not a single bit (1, 2, 4, 8, ...)")
            elif name in self.names and self.names[name] != bit:
                self.problems.append(f"{entry}: is built in as {self.names[name]}")
            elif bit in self.names.values() and self.names.get(name) != bit:
                other = next(key for key, value in self.names.items() if value == bit)
                self.problems.append(f"{entry}: bit {bit} is already named {_show(other)}")
            else:
                self.names[name] = bit

    def _read_gateway(
        self,
        index: int,
        entry: dict[str, Any],
        gateways: list[Gateway],
        caps: list[GatewayCapability],
    ) -> None:
        raw_name = entry.get("name")
        name = raw_name if isinstance(raw_name, str) else ""
        where = describe_gateway(name) if name else f"gateway #{index}"
        self._unknown_keys(where, entry, _GATEWAY_KEYS)
        if not name:
            self.problems.append(f"{where}: name: missing, or not a string")
            return
        gateway = Gateway(
            name=name,
            host=self._str(where, entry, "host", required=True),
            port=self._optional_int(where, entry, "port"),
            transport=self._optional_str(where, entry, "transport"),
            strip=self._int(where, entry, "strip", 0),
            enabled=self._bool(where, entry, "enabled", True),
            trusted=self._bool(where, entry, "trusted", False),
        )
        gateways.append(gateway)
        cap_entries = self._tables(f"{where}: caps", entry.get("caps", []))
        if not cap_entries:
            self.problems.append(f"{where}: caps: missing (list what the gateway can carry)")
        for cap_entry in cap_entries:
            self._unknown_keys(f"{where}: caps", cap_entry, _CAP_KEYS)
            bits = self._capability(f"{where}: caps", cap_entry)
            prefix = self._str(f"{where}: caps", cap_entry, "prefix")
            if bits is not None:
                caps.append(GatewayCapability(name, bits, prefix))

    def _read_rule(
        self, index: int, entry: dict[str, Any], rules: list[Rule], targets: list[RuleTarget]
    ) -> None:
        rule_id = self._int(f"rule #{index}", entry, "id", index)
        prefix = self._str(f"rule {rule_id}", entry, "prefix")
        where = describe_rule(Rule(rule_id, prefix))
        self._unknown_keys(where, entry, _RULE_KEYS)
        rule = Rule(
            id=rule_id,
            prefix=prefix,
            from_uri=self._optional_str(where, entry, "from_uri"),
            request_uri=self._optional_str(where, entry, "request_uri"),
            stopper=self._bool(where, entry, "stopper", False),
            enabled=self._bool(where, entry, "enabled", True),
        )
        rules.append(rule)
        target_entries = self._tables(f"{where}: target", entry.get("target", []))
        for target_index, target_entry in enumerate(target_entries, 1):
            self._read_target(rule_id, where, target_index, target_entry, targets)

    def _read_target(
        self,
        rule_id: int,
        rule_where: str,
        index: int,
        entry: dict[str, Any],
        targets: list[RuleTarget],
    ) -> None:
        gw = entry.get("gw")
        if not isinstance(gw, str):
            self.problems.append(f"{rule_where}: target {index}: gw: missing, or not a string")
            return
        where = f'{rule_where}: target gw "{gw}"'
        self._unknown_keys(where, entry, _TARGET_KEYS)
        capability = self._capability(where, entry)
        priority = self._int(where, entry, "priority", 1)
        weight = self._int(where, entry, "weight", 1)
        if capability is not None:
            targets.append(RuleTarget(rule_id, gw, capability, priority, weight))

    # -- fields

    def _capability(self, where: str, entry: dict[str, Any]) -> int | None:
        """``cap``: a bit-field integer, a capability name, or a list of either.

        A single integer is returned as written (``check_rows`` judges it); None when the
        value cannot be read, so the row is left out instead of guessed.
        """
        value = entry.get("cap")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if value is None or value == []:
            self.problems.append(f"{where}: cap: missing")
            return None
        bits = 0
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item in self.names:
                bits |= self.names[item]
            elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
                bits |= item
            else:
                known = ", ".join(sorted(self.names))
                self.problems.append(
                    f"{where}: cap: {_show(item)} is neither a bit-field nor a name ({known})"
                )
                return None
        return bits

    def _str(self, where: str, entry: dict[str, Any], key: str, required: bool = False) -> str:
        value = entry.get(key)
        if value is None:
            if required:
                self.problems.append(f"{where}: {key}: missing")
            return ""
        if not isinstance(value, str):
            self.problems.append(f"{where}: {key}: {_show(value)} is not a string")
            return ""
        return value

    def _optional_str(self, where: str, entry: dict[str, Any], key: str) -> str | None:
        return self._str(where, entry, key) or None

    def _int(self, where: str, entry: dict[str, Any], key: str, default: int) -> int:
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            self.problems.append(f"{where}: {key}: {_show(value)} is not an integer")
            return default
        return value

    def _optional_int(self, where: str, entry: dict[str, Any], key: str) -> int | None:
        value = entry.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.problems.append(f"{where}: {key}: {_show(value)} is not an integer")
        return None

    def _bool(self, where: str, entry: dict[str, Any], key: str, default: bool) -> bool:
        value = entry.get(key, default)
        if not isinstance(value, bool):
            self.problems.append(f"{where}: {key}: {_show(value)} is not true or false")
            return default
        return value

    def _tables(self, where: str, value: object) -> list[dict[str, Any]]:
        """An array of tables, or a problem (e.g. [gateway] written instead of [[gateway]])."""
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            return value
        self.problems.append(f"{where}: must be an array of tables")
        return []

    def _unknown_keys(self, where: str, entry: dict[str, Any], allowed: frozenset[str]) -> None:
        for key in entry:
            if key not in allowed:
                self.problems.append(f"{where}: unknown key {_show(key)}")


def _show(value: object) -> str:
    """A value as the operator wrote it in TOML (true, "text", 1.5), not as Python shows it."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)  # dates and times: TOML writes them as Python prints them
