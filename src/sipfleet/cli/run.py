"""`sipfleet run ROLE -c node.toml`: one role of a multi-host cluster, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from sipfleet import native
from sipfleet.cli.common import CliError, add_config_option, config_from_args
from sipfleet.config import Config, ConfigError
from sipfleet.logcontext import LogFormat, configure
from sipfleet.mgmt.server import Listener, open_listener
from sipfleet.roles import ROLE_NAMES, available_roles, role_runner
from sipfleet.storage.errors import StorageError
from sipfleet.transport.loop import run as run_loop
from sipfleet.transport.systemd import feed_watchdog, notify, watchdog_period

log = logging.getLogger("sipfleet")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run one role (lb, registrar, proxy)")
    parser.add_argument("role", choices=ROLE_NAMES)
    add_config_option(parser)
    parser.add_argument(
        "--ready-file", type=Path, help="write this file (JSON) once the role is listening"
    )
    add_log_option(parser)
    parser.set_defaults(handler=_run)


def add_log_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text, or one JSON object per line (default: [node] log_format, else text)",
    )


def setup_logging(level: str, log_format: LogFormat = "text", role: str = "") -> None:
    """Every line to stderr, naming ``role``, its worker and the call it is about."""
    configure(level, log_format, role)


def _run(args: argparse.Namespace) -> int:
    if args.role not in available_roles():
        raise CliError(f"role {args.role!r} is not built yet in this version")
    config = config_from_args(args)
    if not config.node.cluster_secret:
        raise CliError(
            "node.cluster_secret: must be set (in the config or SIPFLEET_CLUSTER_SECRET); "
            "every node of the cluster needs the same one"
        )
    setup_logging(args.log_level, args.log_format or config.node.log_format, args.role)
    return run_role(args.role, config, args.ready_file)


def run_role(role: str, config: Config, ready_file: Path | None = None) -> int:
    """Serve ``role`` until SIGTERM/SIGINT. Its management API's socket is bound here,
    before any worker starts, so the port (any free one for port 0) is known for the
    ready file (``{"role", "pid", "mgmt"}``: `sipfleet up` prints the URL)."""
    try:
        mgmt = open_listener(config)
    except OSError as exc:
        raise CliError(f"{role}: {exc.strerror}") from None
    try:
        return _serve(role, config, ready_file, mgmt)
    finally:
        if mgmt is not None:
            mgmt.close()


def _serve(role: str, config: Config, ready_file: Path | None, mgmt: Listener | None) -> int:
    def ready() -> None:
        api = f"; management API {mgmt.url}/" if mgmt is not None else ""
        log.info("%s ready (SIP core: %s)%s", role, native.status, api)
        if ready_file is not None:
            facts = {"role": role, "pid": os.getpid(), "mgmt": mgmt.url if mgmt else None}
            # renamed into place: whoever sees the file reads all of it
            partial = ready_file.with_name(f".{ready_file.name}.{os.getpid()}")
            partial.write_text(json.dumps(facts))
            os.replace(partial, ready_file)
        notify("READY=1", f"STATUS={role} ready")  # Type=notify: systemd counts it started

    # With workers the supervisor feeds systemd's watchdog (only while every worker
    # shows it is alive: transport/workers.py); alone, this process's loop does.
    period = watchdog_period() if config.node.workers == 1 else None

    async def main() -> None:
        task = asyncio.create_task(role_runner(role)(config, ready=ready, mgmt=mgmt))
        watchdog = asyncio.create_task(feed_watchdog(period)) if period else None
        loop = asyncio.get_running_loop()

        def stop() -> None:
            notify("STOPPING=1")
            task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        try:
            await task
        except asyncio.CancelledError:
            log.info("%s stopped", role)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    # SIGHUP reloads what a role can reload (the LB's TLS certificate: it installs its own
    # handler); any other role must not die of `systemctl reload`.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        run_loop(main())
    except (OSError, ConfigError, StorageError, ValueError) as exc:
        # Start-up problems the operator fixes: a busy port, a bad policy module, a
        # database that is not migrated. One line, no traceback.
        raise CliError(f"{role}: {exc}") from None
    return 0
