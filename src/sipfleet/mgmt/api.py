"""The management API's handlers: JSON in and out, one route table per role.

Every answer is JSON. A bad request gets a 4xx whose ``error`` names the field at fault;
a database that does not answer gets 503; anything unexpected is logged with its
traceback here and answered 500 with one line, never the traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import metadata
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.typedefs import Middleware

from sipfleet.core.lb.pools import BadTarget, best_health, checked_target
from sipfleet.mgmt.log_level import LEVELS, LOGGER, set_level
from sipfleet.mgmt.metrics import render
from sipfleet.mgmt.records import binding_record, target_record
from sipfleet.mgmt.view import RoleView
from sipfleet.storage import (
    AlreadyExists,
    Aor,
    InvalidInput,
    StorageError,
    StorageUnavailable,
)
from sipfleet.storage.model import LB_POOLS, LbPool, LbState
from sipfleet.transport.tls import TlsCertificates, TlsFileError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VIEW = web.AppKey("view", RoleView)
READY_TIMEOUT_S = 2.0  # a database slower than this to answer one query is not ready
STATE_OF_ACTION: dict[str, LbState] = {
    "drain": "draining",
    "enable": "active",
    "disable": "disabled",
}
PUBLIC_PATHS = ("/", "/static/")  # the page's shell holds no data: the browser loads it


@functools.cache
def installed_version() -> str:
    """sipfleet's version as installed (the package's __init__ is a layer above)."""
    try:
        return metadata.version("sipfleet")
    except metadata.PackageNotFoundError:
        return "unknown"


class ApiError(Exception):
    """A request the API refuses: ``status`` and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def fail(status: int, message: str) -> NoReturn:
    raise ApiError(status, message)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, str(exc))
    except web.HTTPException as exc:  # the router's 404 / 405
        if exc.status < 400:
            raise
        role = request.app[VIEW].role
        if exc.status == 404:
            return error_response(
                404, f"{request.method} {request.path}: no such endpoint on the {role}"
            )
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")
    except StorageUnavailable as exc:
        return error_response(503, f"database: {exc}")
    except InvalidInput as exc:
        return error_response(400, str(exc))
    except StorageError as exc:
        return error_response(500, f"database: {exc}")
    except Exception as exc:
        log.exception("management API: %s %s failed", request.method, request.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the log")


def bearer_auth(token: str) -> Middleware:
    """Every data request must carry ``Authorization: Bearer <token>`` (compared in
    constant time); the page's shell and static files are public."""
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == "/" or path.startswith(PUBLIC_PATHS[1]):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            response = error_response(401, "Authorization: a valid 'Bearer <mgmt.token>' needed")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sipfleet"'
            return response
        return await handler(request)

    return check


def add_routes(app: web.Application, view: RoleView) -> None:
    """The routes every role serves, and those of its own kind."""
    app[VIEW] = view
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/status", status)
    app.router.add_get("/registrations", registrations)
    app.router.add_get("/location/{aor}", location)
    app.router.add_get("/log-level", get_log_level)
    app.router.add_put("/log-level", put_log_level)
    app.router.add_get("/metrics", metrics)
    if view.role == "lb":
        app.router.add_get("/lb/pools", lb_pools)
        app.router.add_post("/lb/pools/{pool}/targets", lb_add_target)
        app.router.add_delete("/lb/pools/{pool}/targets", lb_remove_target)
        app.router.add_post("/lb/pools/{pool}/targets/{action}", lb_target_state)
        app.router.add_get("/tls", tls_certificate)
        app.router.add_post("/tls/reload", tls_reload)
    if view.role == "proxy":
        app.router.add_post("/lcr/reload", lcr_reload)
        app.router.add_get("/lcr/gateways", lcr_gateways)


def view_of(request: web.Request) -> RoleView:
    return request.app[VIEW]


# -- the process ----------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    view = view_of(request)
    return web.json_response({"alive": True, "role": view.role, "pid": view.pid})


async def ready(request: web.Request) -> web.Response:
    """Its SIP sockets listen and the database answers (200), else 503 saying which."""
    view = view_of(request)
    problems = []
    if not view.listening:
        problems.append("not listening yet")
    try:
        await asyncio.wait_for(view.storage.check_schema(), READY_TIMEOUT_S)
    except TimeoutError:
        problems.append(f"database: no answer within {READY_TIMEOUT_S:g} s")
    except StorageError as exc:
        problems.append(f"database: {exc}")
    body = {"ready": not problems, "role": view.role, "problems": problems}
    return web.json_response(body, status=503 if problems else 200)


async def status(request: web.Request) -> web.Response:
    view = view_of(request)
    now = time.time()
    dsns = view.storage.dsns
    return web.json_response(
        {
            "role": view.role,
            "node": view.node,
            "version": installed_version(),
            "pid": view.pid,
            "started_at": round(view.started_at, 3),
            "uptime_s": round(now - view.started_at, 1),
            "workers": view.workers,
            # with several workers the counters are worker 0's (the one serving this API)
            "counters_of": "worker 0" if view.workers > 1 else "the process",
            "listen": list(view.listen),
            "listening": view.listening,
            "database": {
                "kind": dsns.write.kind,
                "in_flight": view.storage.in_flight,
                "databases": [asdict(found) for found in await view.storage.health()],
            },
            "counters": dict(view.counters()),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format: every worker's counters summed (sipfleet.mgmt.metrics)."""
    view = view_of(request)
    if not view.config.mgmt.metrics:
        fail(404, "metrics: switched off (mgmt.metrics = false)")
    # snapshot files are read from disk: off the event loop that serves SIP
    body, kind = await asyncio.to_thread(render, view.config, view.role)
    return web.Response(body=body, headers={"Content-Type": kind})


async def get_log_level(request: web.Request) -> web.Response:
    level = logging.getLogger(LOGGER).getEffectiveLevel()
    return web.json_response({"level": logging.getLevelName(level).lower()})


async def put_log_level(request: web.Request) -> web.Response:
    body = await json_body(request)
    level = body.get("level")
    if level is None:
        fail(400, f"level: missing (one of {', '.join(LEVELS)})")
    if not isinstance(level, str) or level.lower() not in LEVELS:
        fail(400, f"level: {level!r} is not one of {', '.join(LEVELS)}")
    set_level(view_of(request).config, view_of(request).role, level.lower())  # every worker
    log.warning("log level set to %s through the management API", level.lower())
    return web.json_response({"level": level.lower()})


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        fail(400, "body: not JSON")
    if not isinstance(body, dict):
        fail(400, "body: a JSON object is needed")
    return body


# -- the database's view --------------------------------------------------------------------


async def location(request: web.Request) -> web.Response:
    """The bindings of one AOR (``user@domain``), as every node sees them."""
    text = request.match_info["aor"]
    try:
        aor = Aor.parse(text, "aor")
    except InvalidInput as exc:
        fail(400, str(exc))
    now = int(time.time())
    bindings = await view_of(request).storage.location.lookup(aor, now=now)
    return web.json_response(
        {"aor": str(aor), "bindings": [binding_record(binding, now) for binding in bindings]}
    )


async def registrations(request: web.Request) -> web.Response:
    """Per domain, the AORs registered and their bindings."""
    found = await view_of(request).storage.location.registrations_by_domain()
    return web.json_response(
        {"domains": {row.domain: {"aors": row.aors, "bindings": row.bindings} for row in found}}
    )


# -- LB -------------------------------------------------------------------------------------


async def lb_pools(request: web.Request) -> web.Response:
    """Every target with its admin state, its weight, every LB's view of its health and
    this LB's live one (worker 0's probes); a target naming a host, its members too."""
    view = view_of(request)
    targets = await view.storage.lb_targets.list_all()
    views = await view.storage.lb_targets.list_health()
    now = int(time.time())
    pools: dict[str, list[dict[str, Any]]] = {pool: [] for pool in LB_POOLS}
    for target in targets:
        record = target_record(target, views, now)
        live = view.pools.targets.get((target.pool, target.uri)) if view.pools is not None else None
        record["live"] = live.health if live is not None else None
        members = view.pools.members(target.pool, target.uri) if view.pools is not None else []
        if members:
            record["live"] = best_health(member.health for member in members)
            record["members"] = [
                {"uri": m.uri, "weight": m.weight, "tier": m.tier, "live": m.health}
                for m in members
            ]
        pools[target.pool].append(record)
    return web.json_response({"lb": view.node, "pools": pools})


def pool_of(request: web.Request) -> LbPool:
    pool = request.match_info["pool"]
    for known in LB_POOLS:
        if pool == known:
            return known
    fail(404, f"pool: {pool!r} is not one of {', '.join(LB_POOLS)}")


def target_uri(text: object, field: str = "uri") -> str:
    if not isinstance(text, str) or not text:
        fail(400, f"{field}: missing (sip:IP:PORT or sip:HOST, optionally ;transport=tcp)")
    try:
        checked_target(text)
    except BadTarget as exc:
        fail(400, f"{field}: {exc}")
    return text


async def lb_add_target(request: web.Request) -> web.Response:
    pool = pool_of(request)
    body = await json_body(request)
    uri = target_uri(body.get("uri"))
    weight = body.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 65535:
        fail(400, f"weight: {weight!r} is not a whole number from 0 to 65535")
    storage = view_of(request).storage
    try:
        added = await storage.lb_targets.add(pool, uri, weight=weight)
    except AlreadyExists:
        fail(409, f"uri: {uri} is already in the {pool} pool")
    log.info("%s target %s added through the management API", pool, uri)
    return web.json_response(target_record(added, [], int(time.time())), status=201)


async def lb_remove_target(request: web.Request) -> web.Response:
    pool = pool_of(request)
    uri = target_uri(request.query.get("uri"))
    if not await view_of(request).storage.lb_targets.remove(pool, uri):
        fail(404, f"uri: no {uri} in the {pool} pool")
    log.info("%s target %s removed through the management API", pool, uri)
    return web.json_response({"pool": pool, "uri": uri, "removed": True})


async def lb_target_state(request: web.Request) -> web.Response:
    """``drain`` (no new Call-IDs; in-dialog requests still reach it), ``enable``,
    ``disable``: written to ``lb_target``, so every LB applies it at its next reload."""
    pool = pool_of(request)
    action = request.match_info["action"]
    state = STATE_OF_ACTION.get(action)
    if state is None:
        fail(404, f"action: {action!r} is not one of {', '.join(STATE_OF_ACTION)}")
    uri = target_uri(request.query.get("uri"))
    if not await view_of(request).storage.lb_targets.set_state(pool, uri, state):
        fail(404, f"uri: no {uri} in the {pool} pool")
    log.info("%s target %s is %s (management API)", pool, uri, state)
    return web.json_response({"pool": pool, "uri": uri, "state": state})


# -- lb: TLS certificate ---------------------------------------------------------------------


def certificates_of(request: web.Request) -> TlsCertificates:
    certificates = view_of(request).tls
    if certificates is None:
        fail(404, "lb.listen: this LB has no tls: listener")
    return certificates


async def tls_certificate(request: web.Request) -> web.Response:
    """The certificate new TLS connections get (this worker's), and its reloads."""
    return web.json_response(certificates_of(request).describe())


async def tls_reload(request: web.Request) -> web.Response:
    """Load the certificate and key files again, here and (SIGHUP through the
    supervisor) in every other worker. 422 naming the setting when a file does not
    serve: the old certificate stays."""
    certificates = certificates_of(request)
    try:
        await asyncio.to_thread(certificates.reload, "management API")
    except TlsFileError as exc:
        fail(422, str(exc))
    if view_of(request).workers > 1:
        os.kill(os.getppid(), signal.SIGHUP)  # the supervisor relays it to every worker
    return web.json_response(certificates.describe())


# -- proxy: LCR -----------------------------------------------------------------------------


async def lcr_reload(request: web.Request) -> web.Response:
    """Move the LCR version on (every proxy reloads within its interval) and reload this
    proxy's tables now."""
    view = view_of(request)
    version = await view.storage.lcr.bump_version()
    if view.lcr is not None:
        await view.lcr.cache.reload(force=True)
    loaded = view.lcr.cache.version if view.lcr is not None else None
    log.info("LCR version %d (reload through the management API)", version)
    return web.json_response({"version": version, "loaded": loaded})


async def lcr_gateways(request: web.Request) -> web.Response:
    """The gateways of this proxy's LCR tables and their state as its calls found them:
    ``up``, ``defunct`` (left out, probed) or ``disabled`` (by the operator)."""
    lcr = view_of(request).lcr
    if lcr is None:
        fail(404, "lcr: this proxy has no LCR router")
    now = lcr.clock()
    gateways = []
    for gateway in lcr.cache.table.rows.gateways:
        if not gateway.enabled:
            state = "disabled"
        elif lcr.health.is_defunct(gateway.name, now):
            state = "defunct"
        else:
            state = "up"
        gateways.append(
            {
                "name": gateway.name,
                "host": gateway.host,
                "port": gateway.port,
                "transport": gateway.transport,
                "state": state,
                "failures": lcr.health.failures(gateway.name),
            }
        )
    return web.json_response({"version": lcr.cache.version, "gateways": gateways})
