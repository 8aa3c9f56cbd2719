"""The cluster part of `sipfleet status`: what the database and the nodes' APIs say.

From the database (the primary, like every command): the LB pools with every LB's view
of their health, and registrations per domain. From each management API it is given
(this host's `sipfleet up` roles, ``--url`` for other nodes): its ``/status``, asked
with ``mgmt.token`` when the config has one. Nothing here changes the exit status: a
node that does not answer is shown as such.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from sipfleet.cli.common import CliError
from sipfleet.cli.db import run
from sipfleet.cli.lb import target_line
from sipfleet.config import Config
from sipfleet.mgmt.records import target_record
from sipfleet.storage import Dsn, Dsns, open_storage

API_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Api:
    name: str  # the role's name in `up`, or the URL given
    url: str


def cluster_view(config: Config, database: Dsn, apis: list[Api]) -> dict[str, Any]:
    """Everything the command shows beyond `up`'s own status, as JSON-ready data."""
    return {
        "database": str(database),
        **_from_database(database),
        "apis": [_api_status(api, config.mgmt.token) for api in apis],
    }


def _from_database(dsn: Dsn) -> dict[str, Any]:
    if dsn.path is not None and not dsn.path.exists():
        return {"database_error": f"no database at {dsn.path}"}  # not created by a read

    async def read() -> dict[str, Any]:
        storage = open_storage(Dsns(dsn, (dsn,)), pool_size=1, max_in_flight=4)
        try:
            targets = await storage.lb_targets.list_all()
            views = await storage.lb_targets.list_health()
            domains = await storage.location.registrations_by_domain()
        finally:
            await storage.close()
        now = int(time.time())
        return {
            "pools": [target_record(target, views, now) for target in targets],
            "registrations": {d.domain: {"aors": d.aors, "bindings": d.bindings} for d in domains},
        }

    try:
        return run(read)
    except CliError as exc:  # the database's error, in one line: the view goes on without it
        return {"database_error": str(exc)}


def _api_status(api: Api, token: str) -> dict[str, Any]:
    # only http(s): status.json holds what the roles wrote, --url is checked (status.py)
    request = urllib.request.Request(f"{api.url.rstrip('/')}/status")  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    shown: dict[str, Any] = {"name": api.name, "url": api.url}
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as answer:  # noqa: S310
            shown["status"] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        shown["error"] = f"HTTP {exc.code}: {_error_text(exc)}"
    except (OSError, ValueError) as exc:
        shown["error"] = f"no answer: {getattr(exc, 'reason', exc)}"
    return shown


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)


def print_cluster(view: dict[str, Any]) -> None:
    if view["apis"]:
        print("management APIs:")
        width = max(len(api["name"]) for api in view["apis"])
        for api in view["apis"]:
            print(f"  {api['name']:<{width}}  {api['url']}  {_api_line(api)}")
    if "database_error" in view:
        print(f"database {view['database']}: {view['database_error']}")
        return
    print(f"LB pools (database {view['database']}):")
    pools = view["pools"]
    width = max((len(record["uri"]) for record in pools), default=0)
    for record in pools:
        print("  " + target_line(record, width))
    if not pools:
        print("  no targets")
    print("registrations:")
    for domain, counts in view["registrations"].items():
        print(f"  {domain}  {counts['aors']} AORs, {counts['bindings']} bindings")
    if not view["registrations"]:
        print("  nobody is registered")


def _api_line(api: dict[str, Any]) -> str:
    if "error" in api:
        return str(api["error"])
    status = api["status"]
    databases = status.get("database", {}).get("databases", [])
    down = [db["name"] for db in databases if not db["up"]]
    lags = [f"lag {db['lag_s']} s" for db in databases if db["up"] and db["lag_s"] is not None]
    workers = status["workers"]
    parts = [
        f"{status['role']} {status['node']}",
        f"up {duration(int(status['uptime_s']))}",
        f"{workers} worker{'s' if workers != 1 else ''}",
        f"{status['counters'].get('requests_received', 0)} requests",
        f"database down: {', '.join(down)}" if down else "database up",
        *lags,
    ]
    return ", ".join(parts)


def duration(seconds: int) -> str:
    """12s, 3m05s, 2h07m."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
