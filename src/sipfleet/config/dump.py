"""Writing a Config back as TOML (for `sipfleet up`'s per-role files and `check-config`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sipfleet.config.model import Config


def config_to_toml(config: Config) -> str:
    data = config.model_dump(mode="json")
    chunks = []
    for section, values in data.items():
        lines = [f"[{section}]"]
        lines += [f"{key} = {_value(value)}" for key, value in values.items()]
        chunks.append("\n".join(lines))
    return "\n\n".join(chunks) + "\n"


def _value(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML as written.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)


def write_config(config: Config, path: Path) -> None:
    path.write_text(config_to_toml(config), encoding="utf-8")
    path.chmod(0o600)  # it may hold the cluster secret and database passwords
