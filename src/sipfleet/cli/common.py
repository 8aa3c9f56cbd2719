"""What the subcommands share: the error type, config and database options."""

from __future__ import annotations

import argparse
from pathlib import Path

from sipfleet.config import Config, ConfigError, load_config


class CliError(Exception):
    """An operator error: printed as one line, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="node configuration file (TOML)")


def add_db_option(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--db",
        metavar="URL",
        help="database URL (sqlite:///path, mysql://user:pw@host/db, postgresql://...); "
        "default: the config's database.write, else the embedded SQLite of `sipfleet up`",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
