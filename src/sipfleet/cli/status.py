"""`sipfleet status`: the roles of the running `sipfleet up` on this host, and the
cluster at a glance (cli/cluster_view.py): the LB pools and registrations from the
database, each role's management API (``/status``) and those of other nodes (``--url``).

`up` publishes its view in ``<data dir>/run/status.json`` (written to a temporary file and
renamed over the old one, so a reader never sees half of it) whenever a role changes
state, and removes it when it stops. This command reads that file: it finds the data
directory as `up` does (``--data-dir``, else ``SIPFLEET_DATA_DIR``, else the config's
``node.data_dir``, else the default one), checks that the `up` that wrote it still runs
(a file left by one that was killed is reported as not running) and prints one line per
role.

Exit status (of `up`'s roles alone, whatever the database and the APIs say): 0 every
role is running; 1 some role is not (restarting, starting); 3 `sipfleet up` is not
running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from sipfleet.cli.cluster_view import Api, cluster_view, duration, print_cluster
from sipfleet.cli.common import CliError, add_db_option, config_from_args
from sipfleet.config import Config
from sipfleet.storage import StorageError
from sipfleet.storage.dsn import Dsn, dsns_from_config

STATUS_FILE = "status.json"
NOT_ALL_RUNNING = 1
UP_NOT_RUNNING = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="the roles of the running `sipfleet up` (pid, state, restarts, last exit), "
        "their management APIs, the LB pools and registrations from the database "
        "(exit status 0: all running, 1: some role is not, 3: `up` is not running)",
    )
    add_db_option(parser)
    parser.add_argument("--data-dir", type=Path, help="the data directory `sipfleet up` was given")
    parser.add_argument(
        "--url",
        action="append",
        type=_http_url,
        default=[],
        metavar="URL",
        help="also ask this node's management API (http://HOST:PORT; repeatable), with "
        "the config's mgmt.token (or SIPFLEET_MGMT_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.set_defaults(handler=_status)


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def status_path(run_dir: Path) -> Path:
    return run_dir / STATUS_FILE


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the new one, never a partial one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(status, indent=1) + "\n")
    os.replace(temporary, path)


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): tells a process from a later one
    that was given the same pid. None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None = None) -> bool:
    """``pid`` runs (not a zombie), and is the process that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process (up run as root): it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill() said it exists
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def _status(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    data_dir = args.data_dir if args.data_dir is not None else config.node.data_dir
    database = _database(args, config, data_dir)
    path = status_path(data_dir / "run")
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return _not_running(args, config, database, f"sipfleet up is not running (no {path})")
    except (OSError, ValueError) as exc:
        reason = f"sipfleet up is not running ({path}: unreadable: {exc})"
        return _not_running(args, config, database, reason)
    if not alive(status["pid"], status.get("pid_started")):
        reason = f"sipfleet up is not running ({path} was left by pid {status['pid']}, gone)"
        return _not_running(args, config, database, reason)
    now = time.time()
    roles = [_view(role, now) for role in status["roles"]]
    all_running = all(role["state"] == "running" for role in roles)
    apis = [Api(role["name"], role["mgmt"]) for role in roles if role.get("mgmt")]
    cluster = cluster_view(config, database, apis + _other_apis(args))
    if args.json:
        up = {"up": "running", "pid": status["pid"], "roles": roles}
        print(json.dumps({**up, "cluster": cluster}, indent=1))
    else:
        _print(status, roles, now)
        print_cluster(cluster)
    return 0 if all_running else NOT_ALL_RUNNING


def _database(args: argparse.Namespace, config: Config, data_dir: Path) -> Dsn:
    """--db, else the config's database.write, else the SQLite of `up` in ``data_dir``."""
    node = config.node.model_copy(update={"data_dir": data_dir})
    try:
        return dsns_from_config(config.model_copy(update={"node": node}), args.db).write
    except StorageError as exc:
        raise CliError(str(exc)) from None


def _other_apis(args: argparse.Namespace) -> list[Api]:
    return [Api(url, url) for url in args.url]


def _not_running(args: argparse.Namespace, config: Config, database: Dsn, message: str) -> int:
    """`up` is not running here; the database and other nodes may still say much."""
    cluster = cluster_view(config, database, _other_apis(args))
    if args.json:
        print(json.dumps({"up": "not running", "reason": message, "roles": [], "cluster": cluster}))
    else:
        print(message, file=sys.stderr)
        print_cluster(cluster)
    return UP_NOT_RUNNING


def _view(role: dict[str, Any], now: float) -> dict[str, Any]:
    """The role as `up` last wrote it; "running" only if its pid is indeed alive (`up`
    notices a death within a fraction of a second, this command at once)."""
    view = dict(role)
    if view["state"] == "running" and not (view["pid"] and alive(view["pid"])):
        view["state"] = "exited"
    if view["state"] == "restarting" and view.get("next_start_at") is not None:
        view["next_start_in"] = max(0.0, round(view["next_start_at"] - now, 1))
    return view


def _state_text(role: dict[str, Any]) -> str:
    state = str(role["state"])
    if state == "restarting":
        state = f"restarting in {role.get('next_start_in', 0):g} s"
    if role["state"] != "running" and role.get("failures"):
        times = "time" if role["failures"] == 1 else "times"
        state += f", failed {role['failures']} {times} in a row"
    return state


def _print(status: dict[str, Any], roles: list[dict[str, Any]], now: float) -> None:
    uptime = int(now - status["started_at"])
    print(f"sipfleet up: pid {status['pid']}, up {duration(uptime)}, {status['data_dir']}")
    rows = [("NAME", "PID", "STATE", "RESTARTS", "LAST EXIT")]
    for role in roles:
        last = "-"
        if role.get("last_exit"):
            at = time.strftime("%H:%M:%S", time.localtime(role["last_exit_at"]))
            last = f"{role['last_exit']} at {at}"
        pid = str(role["pid"]) if role["pid"] else "-"
        rows.append((role["name"], pid, _state_text(role), str(role["restarts"]), last))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  " + "  ".join([*cells, row[4]]))
