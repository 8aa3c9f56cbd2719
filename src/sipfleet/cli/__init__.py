"""`sipfleet …`: one subcommand module per topic, each with ``register(subparsers)``.

A subcommand handler returns the process exit status. Errors the operator can fix are
raised as ``CliError`` and printed as one line naming the field; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sipfleet import __version__
from sipfleet.cli.common import CliError

# Topic modules under sipfleet.cli; a module that is not there yet is skipped.
TOPICS = (
    "up",
    "run",
    "check_config",
    "db",
    "subscriber",
    "location",
    "lb",
    "gw",
    "lcr",
    "cdr",
    "status",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipfleet", description="A cacheless SIP server cluster.")
    parser.add_argument("--version", action="version", version=f"sipfleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for topic in TOPICS:
        try:
            module = importlib.import_module(f"sipfleet.cli.{topic}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sipfleet.cli.{topic}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except CliError as exc:
        print(f"sipfleet: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sipfleet lcr export | head`: the reader has gone, fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
