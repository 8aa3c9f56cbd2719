"""Reading a node's TOML file, with secrets from the environment, into a Config."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sipfleet.config.model import Config

# Environment variables that override keys (secrets do not belong in files).
ENV_OVERRIDES = {
    "SIPFLEET_CLUSTER_SECRET": ("node", "cluster_secret"),
    "SIPFLEET_DATA_DIR": ("node", "data_dir"),
    "SIPFLEET_DB_WRITE": ("database", "write"),
    "SIPFLEET_MGMT_TOKEN": ("mgmt", "token"),
    # true/false: the benchmarks switch the metrics of every role they start with it
    "SIPFLEET_MGMT_METRICS": ("mgmt", "metrics"),
}


class ConfigError(Exception):
    """A configuration problem, phrased for the operator (names the key)."""


def load_config(path: Path | None = None, env: dict[str, str] | None = None) -> Config:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    environ = os.environ if env is None else env
    for variable, (section, key) in ENV_OVERRIDES.items():
        if environ.get(variable):
            data.setdefault(section, {})[key] = environ[variable]
    return config_from_dict(data, str(path) if path else "defaults")


def config_from_dict(data: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, origin)) from None


def describe_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {exc.error_count()} error(s)"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
