"""The management API of real role processes (tests/mgmt/conftest.py): every endpoint,
its errors, the token; the parts a running process cannot be made to show (a defunct
gateway, a handler that fails) on the app itself, over a real socket and real SQLite."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sipfleet.cli import main
from sipfleet.config import ConfigError, config_from_dict, load_config
from sipfleet.mgmt.server import build_app
from sipfleet.mgmt.view import RoleView
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.storage import Dsn, Storage, open_storage
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability
from sipfleet.storage.migrate import upgrade
from tests.mgmt.conftest import Fleet, http, mgmt_url, wait_for

ROLES = ("lb", "registrar", "proxy")


# -- every role ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_health_ready_and_status_of_every_role(fleet: Fleet, role: str) -> None:
    status, body = http(fleet.url(role, "/health"))
    assert (status, body["alive"], body["role"]) == (200, True, role)
    status, body = http(fleet.url(role, "/ready"))
    assert (status, body) == (200, {"ready": True, "role": role, "problems": []})
    status, body = http(fleet.url(role, "/status"))
    assert status == 200
    assert (body["role"], body["node"], body["workers"], body["listening"]) == (role, role, 1, True)
    assert body["version"] == "0.1.0"
    assert body["uptime_s"] >= 0
    port = fleet.cluster.roles[role].port
    assert f"udp:127.0.0.1:{port}" in body["listen"]
    assert body["database"]["kind"] == "sqlite"
    assert "requests_received" in body["counters"]


def test_status_shows_the_database(fleet: Fleet) -> None:
    _, body = http(fleet.url("proxy", "/status"))
    [primary] = body["database"]["databases"]
    assert (primary["role"], primary["up"], primary["error"]) == ("primary", True, None)
    assert primary["name"] == str(Dsn.parse(fleet.cluster.dsn))
    assert body["database"]["in_flight"] >= 0


@pytest.mark.parametrize("role", ROLES)
def test_metrics_of_every_role(fleet: Fleet, role: str) -> None:
    """What the metrics engineer's render() makes of the role's published snapshots."""

    def rendered() -> str:
        status, text = http(fleet.url(role, "/metrics"))
        assert status == 200
        return str(text) if "sipfleet_sip_requests_total" in text else ""

    text = wait_for(rendered, 5, f"the {role}'s first snapshot")
    assert f'role="{role}"' in text


def test_registrar_counts_the_register_it_answered(fleet: Fleet) -> None:
    _, body = http(fleet.url("registrar", "/status"))
    assert body["counters"]["requests_received"] >= 1
    assert body["counters"]["messages_sent"] >= 1


def test_bindings_of_an_aor(fleet: Fleet) -> None:
    status, body = http(fleet.url("proxy", "/location/alice@example.com"))
    assert status == 200
    assert body["aor"] == "alice@example.com"
    [binding] = body["bindings"]
    assert binding["contact"].startswith("sip:alice@127.0.0.1:")
    assert 0 < binding["expires_in"] <= 600
    assert http(fleet.url("proxy", "/location/nobody@example.com")) == (
        200,
        {"aor": "nobody@example.com", "bindings": []},
    )
    status, body = http(fleet.url("proxy", "/location/no-domain"))
    assert status == 400
    assert body["error"].startswith("aor: 'no-domain' is not USER@DOMAIN")


def test_registrations_by_domain(fleet: Fleet) -> None:
    status, body = http(fleet.url("lb", "/registrations"))
    assert (status, body["domains"]) == (200, {"example.com": {"aors": 1, "bindings": 1}})


def test_log_level_changes_at_run_time(fleet: Fleet) -> None:
    url = fleet.url("registrar", "/log-level")
    assert http(url) == (200, {"level": "debug"})  # the harness starts roles with debug
    try:
        assert http(url, "PUT", {"level": "WARNING"}) == (200, {"level": "warning"})
        assert http(url) == (200, {"level": "warning"})
    finally:
        http(url, "PUT", {"level": "debug"})
    assert http(url, "PUT", {"level": "loud"}) == (
        400,
        {"error": "level: 'loud' is not one of debug, info, warning, error"},
    )
    assert http(url, "PUT", {}) == (
        400,
        {"error": "level: missing (one of debug, info, warning, error)"},
    )
    assert http(url, "PUT", raw=b"level=debug") == (400, {"error": "body: not JSON"})
    assert http(url, "PUT", [1]) == (400, {"error": "body: a JSON object is needed"})


def test_unknown_paths_and_other_roles_endpoints_are_json_404(fleet: Fleet) -> None:
    assert http(fleet.url("registrar", "/lb/pools")) == (
        404,
        {"error": "GET /lb/pools: no such endpoint on the registrar"},
    )
    assert http(fleet.url("lb", "/lcr/gateways"))[0] == 404
    status, body = http(fleet.url("lb", "/health"), "DELETE")
    assert status == 405
    assert body["error"] == "Method Not Allowed: DELETE /health"


def test_tls_reload_needs_a_tls_listener(fleet: Fleet) -> None:
    """(Reloading itself: tests/integration/test_lb_tls.py.)"""
    no_tls = (404, {"error": "lb.listen: this LB has no tls: listener"})
    assert http(fleet.url("lb", "/tls")) == no_tls
    assert http(fleet.url("lb", "/tls/reload"), "POST") == no_tls
    assert http(fleet.url("registrar", "/tls/reload"), "POST")[0] == 404


def test_the_page_is_served_by_the_api(fleet: Fleet) -> None:
    status, page = http(fleet.url("proxy", "/"))
    assert status == 200
    assert '<script src="/static/status.js"' in page
    status, script = http(fleet.url("proxy", "/static/status.js"))
    assert status == 200
    assert "textContent" in script
    assert "innerHTML" not in script  # every value from the network goes in as text
    assert http(fleet.url("proxy", "/static/../api.py"))[0] == 404
    assert http(fleet.url("proxy", "/static/nothing.js"))[0] == 404


# -- LB pools ------------------------------------------------------------------------------


def test_pools_show_state_weight_and_health(fleet: Fleet) -> None:
    fleet.wait_until_pools_up()
    target = fleet.pool("proxy")[fleet.pool_uris["proxy"]]
    assert (target["state"], target["weight"]) == ("active", 1)
    wait_for(
        lambda: fleet.pool("proxy")[fleet.pool_uris["proxy"]]["health"].get("lb"),
        10,
        "the LB's health view in lb_target_health",
    )


def test_add_drain_enable_and_remove_a_target(fleet: Fleet) -> None:
    targets = fleet.url("lb", "/lb/pools/proxy/targets")
    uri = "sip:127.0.0.1:5999"
    status, body = http(targets, "POST", {"uri": uri, "weight": 3})
    assert status == 201
    assert (body["pool"], body["uri"], body["weight"], body["state"]) == ("proxy", uri, 3, "active")
    try:
        assert http(targets, "POST", {"uri": uri}) == (
            409,
            {"error": f"uri: {uri} is already in the proxy pool"},
        )
        assert fleet.pool("proxy")[uri]["weight"] == 3
        # the LB itself takes it up from lb_target at its next reload, and finds it down
        wait_for(lambda: fleet.pool("proxy")[uri]["live"] == "down", 10, "probed and down")

        drained = http(f"{targets}/drain?uri={uri}", "POST")
        assert drained == (200, {"pool": "proxy", "uri": uri, "state": "draining"})
        assert fleet.pool("proxy")[uri]["state"] == "draining"
        assert http(f"{targets}/enable?uri={uri}", "POST")[1]["state"] == "active"
        assert http(f"{targets}/disable?uri={uri}", "POST")[1]["state"] == "disabled"
        assert http(f"{targets}/pause?uri={uri}", "POST") == (
            404,
            {"error": "action: 'pause' is not one of drain, enable, disable"},
        )
    finally:
        removed = http(f"{targets}?uri={uri}", "DELETE")
    assert removed == (200, {"pool": "proxy", "uri": uri, "removed": True})
    assert uri not in fleet.pool("proxy")
    assert http(f"{targets}?uri={uri}", "DELETE") == (
        404,
        {"error": f"uri: no {uri} in the proxy pool"},
    )
    assert http(f"{targets}/drain?uri={uri}", "POST")[0] == 404


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "error"),
    [
        ("/lb/pools/proxy/targets", "POST", {}, 400, "uri: missing"),
        ("/lb/pools/proxy/targets", "POST", {"uri": "sip:10.0.0.256"}, 400, "uri: "),
        (
            "/lb/pools/proxy/targets",
            "POST",
            {"uri": "sip:127.0.0.1:5990", "weight": -1},
            400,
            "weight: -1 is not a whole number from 0 to 65535",
        ),
        (
            "/lb/pools/proxy/targets",
            "POST",
            {"uri": "sip:127.0.0.1:5990", "weight": "2"},
            400,
            "weight: '2' is not",
        ),
        ("/lb/pools/proxy/targets", "POST", None, 400, "body: not JSON"),
        (
            "/lb/pools/media/targets",
            "POST",
            {"uri": "sip:127.0.0.1:5990"},
            404,
            "pool: 'media' is not one of registrar, proxy",
        ),
        ("/lb/pools/proxy/targets", "DELETE", None, 400, "uri: missing"),
        ("/lb/pools/proxy/targets?uri=http://x", "DELETE", None, 400, "uri: "),
        ("/lb/pools/proxy/targets/drain", "POST", None, 400, "uri: missing"),
    ],
)
def test_pool_requests_refused_naming_the_field(
    fleet: Fleet, path: str, method: str, body: Any, status: int, error: str
) -> None:
    answer = http(fleet.url("lb", path), method, body)
    assert answer[0] == status
    assert answer[1]["error"].startswith(error), answer
    assert "sip:127.0.0.1:5990" not in fleet.pool("proxy")


# -- proxy: LCR ----------------------------------------------------------------------------


def test_lcr_gateways_and_reload(fleet: Fleet) -> None:
    status, body = http(fleet.url("proxy", "/lcr/gateways"))
    assert status == 200
    states = {gw["name"]: (gw["state"], gw["failures"]) for gw in body["gateways"]}
    assert states == {"sipgw1": ("up", 0), "sipgw2": ("disabled", 0)}
    before = body["version"]
    status, body = http(fleet.url("proxy", "/lcr/reload"), "POST")
    assert status == 200
    assert body["version"] == before + 1
    assert body["loaded"] == body["version"]  # this proxy reloaded at once
    assert http(fleet.url("proxy", "/lcr/gateways"))[1]["version"] == before + 1


# -- the token -----------------------------------------------------------------------------


def test_a_token_is_required_once_configured(fleet: Fleet) -> None:
    cluster = fleet.cluster
    token = "a-long-management-token"
    cluster.start("registrar", "guarded", mgmt={"token": token})
    url = mgmt_url(cluster, "guarded")
    for wrong in (None, "not-it", token + "x", ""):
        status, body = http(f"{url}/status", token=wrong)
        assert status == 401, wrong
        assert body == {"error": "Authorization: a valid 'Bearer <mgmt.token>' needed"}
    assert http(f"{url}/status", token=token)[0] == 200
    assert http(f"{url}/log-level", "PUT", {"level": "error"})[0] == 401
    assert http(f"{url}/log-level", token=token) == (200, {"level": "debug"})
    assert http(f"{url}/")[0] == 200  # the page's shell: no data, the script sends the token
    assert http(f"{url}/static/status.js")[0] == 200


def test_several_workers_one_api(fleet: Fleet) -> None:
    fleet.cluster.start("registrar", "workers", node={"workers": 2})
    url = mgmt_url(fleet.cluster, "workers")
    status, body = http(f"{url}/status")
    assert (status, body["workers"], body["counters_of"]) == (200, 2, "worker 0")
    assert http(f"{url}/ready")[0] == 200


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:0"])
def test_off_loopback_without_a_token_is_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"mgmt\.token: must be set when mgmt\.listen"):
        config_from_dict({"mgmt": {"listen": listen}})
    assert config_from_dict({"mgmt": {"listen": listen, "token": "t"}}).mgmt.token == "t"
    env = {"SIPFLEET_MGMT_TOKEN": "from-env"}
    assert load_config(None, env).mgmt.token == "from-env"


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.2:9000", "[::1]:0", ""])
def test_loopback_needs_no_token(listen: str) -> None:
    assert config_from_dict({"mgmt": {"listen": listen}}).mgmt.listen == listen


@pytest.mark.parametrize(
    "listen", ["localhost:80", "127.0.0.1", "127.0.0.1:70000", "127.0.0.1:http"]
)
def test_a_bad_listen_names_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"mgmt\.listen: .*is not IP:PORT"):
        config_from_dict({"mgmt": {"listen": listen}})


def test_a_role_refuses_to_start_open_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "open.toml"
    config.write_text('[node]\ncluster_secret = "0123456789abcdef"\n[mgmt]\nlisten = "0.0.0.0:0"\n')
    assert main(["run", "registrar", "-c", str(config)]) == 1
    error = capsys.readouterr().err
    assert "mgmt.token: must be set when mgmt.listen (0.0.0.0:0) is not a loopback" in error
    assert "Traceback" not in error


# -- the app itself: what a running role cannot be made to show ----------------------------


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    dsn = f"sqlite:///{tmp_path / 'api.db'}"
    await upgrade(Dsn.parse(dsn))
    opened = open_storage(dsn)
    try:
        yield opened
    finally:
        await opened.close()


async def _client(view: RoleView) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(view), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_a_defunct_gateway(storage: Storage) -> None:
    await storage.lcr.add_gateway(Gateway("gw1", "127.0.0.1", 5999), [GatewayCapability("gw1", 1)])
    now = [100.0]
    lcr = LcrRouter.from_config(config_from_dict({}), storage.lcr)
    lcr.clock = lambda: now[0]
    await lcr.cache.reload()
    for _ in range(3):  # proxy.lcr_defunct_after
        lcr.trunk_ended("gw1", 503, progressed=False)
    client = await _client(RoleView("proxy", config_from_dict({}), storage, [], lcr=lcr))
    try:
        answer = await client.get("/lcr/gateways")
        body = await answer.json()
        assert body["gateways"][0]["state"] == "defunct"
        assert body["gateways"][0]["failures"] == 3
        now[0] += 61  # proxy.lcr_defunct_s: back on probation
        body = await (await client.get("/lcr/gateways")).json()
        assert body["gateways"][0]["state"] == "up"
    finally:
        await client.close()


async def test_a_failing_handler_is_a_json_500_and_logged(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Mapping[str, int]:
        raise RuntimeError("counter exploded")

    client = await _client(
        RoleView("registrar", config_from_dict({}), storage, [], counters=broken)
    )
    try:
        with caplog.at_level(logging.ERROR, "sipfleet.mgmt"):
            answer = await client.get("/status")
            assert answer.status == 500
            assert await answer.json() == {"error": "internal error (RuntimeError); see the log"}
        assert "counter exploded" in caplog.text  # the traceback is in the log, not the answer
    finally:
        await client.close()


async def test_ready_says_why_not(storage: Storage) -> None:
    client = await _client(RoleView("registrar", config_from_dict({}), storage, []))
    try:
        answer = await client.get("/ready")
        assert answer.status == 503
        assert (await answer.json())["problems"] == ["not listening yet"]
    finally:
        await client.close()
