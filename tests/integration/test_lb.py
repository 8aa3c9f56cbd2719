"""The LB over real sockets: registrar and proxy behind it, phones (sipp and a scripted UA)
in front. Registration with Path and flow token, calls through LB -> proxy -> LB -> phone,
refused tokens, TCP flows, keepalives; pool changes in test_lb_pools.py, NAT in
test_lb_nat.py."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.sip import Request
from sipfleet.sip.flow import FlowTokens
from tests.integration.harness import (
    PING,
    SECRET,
    Cluster,
    RawUa,
    free_port,
    running_cluster,
)
from tests.integration.sipp import (
    SippRun,
    register_scenario,
    run_sipp,
    sipp_report,
    start_sipp,
    stop_sipp,
)

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
PASSWORD = "secret"
TOKENS = FlowTokens(SECRET.encode())
_users = itertools.count(1)


LB_SETTINGS = {"probe_interval_s": 1.0, "pool_reload_s": 0.5, "keepalive_interval_s": 1.0}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Registrar (no digest: the LB does not care), proxy (callers authenticate), and an
    LB of two workers (so flows and connections are handed between them)."""
    overrides = {"registrar": {"authenticate": False}}
    with running_cluster(tmp_path_factory.mktemp("lb"), overrides=overrides) as cluster:
        cluster.add_subscriber("alice", DOMAIN, PASSWORD)
        cluster.add_lb_target("registrar", cluster.start("registrar"))
        cluster.add_lb_target("proxy", cluster.start("proxy"))
        cluster.start("lb", lb=LB_SETTINGS, node={"workers": 2})
        yield cluster


def lb_address(cluster: Cluster) -> tuple[str, int]:
    return "127.0.0.1", cluster.roles["lb"].port


def lb_target_text(cluster: Cluster) -> str:
    return f"127.0.0.1:{cluster.roles['lb'].port}"


def register(cluster: Cluster, workdir: Path, user: str, port: int, expires: int = 600) -> SippRun:
    scenario = register_scenario(
        workdir, user=user, authenticate=False, expires=expires, name=f"reg-{user}-{expires}"
    )
    result = run_sipp(scenario, lb_target_text(cluster), workdir, local_port=port)
    assert result.ok, result.explain()
    return result


def call(cluster: Cluster, workdir: Path, callee: str, *, calls: int = 1) -> SippRun:
    fields = workdir / f"call-{callee}.csv"
    fields.write_text(f"SEQUENTIAL\n{callee};{DOMAIN};alice\n")
    return run_sipp(
        "proxy_uac_auth_call",
        lb_target_text(cluster),
        workdir,
        local_port=free_port(),
        inf=fields,
        calls=calls,
        rate=5,
        timeout=20,
        extra=["-au", "alice", "-ap", PASSWORD],
    )


def new_user() -> str:
    return f"lbuser{next(_users)}"


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_register_through_the_lb_stores_its_path_and_flow_token(
    cluster: Cluster, tmp_path: Path
) -> None:
    user, port = new_user(), free_port()
    register(cluster, tmp_path, user, port)
    (binding,) = cluster.bindings(user, DOMAIN)
    lb_host, lb_port = lb_address(cluster)
    assert binding.path == f"<sip:{binding.flow}@{lb_host}:{lb_port};lr>"
    assert binding.received is None  # the LB vouches for the flow instead
    flow = TOKENS.decode(binding.flow or "")
    assert flow is not None
    assert (flow.transport, flow.host, flow.port) == ("udp", "127.0.0.1", port)


def test_a_call_goes_through_the_lb_both_ways(cluster: Cluster, tmp_path: Path) -> None:
    bob, port = new_user(), free_port()
    register(cluster, tmp_path, bob, port)
    # -aa: it answers the LB's keepalive OPTIONS (each counts as a call for -m)
    phone = start_sipp(
        "proxy_uas_answer", tmp_path, local_port=port, calls=100, timeout=20, extra=["-aa"]
    )
    result = call(cluster, tmp_path, bob)
    stop_sipp(phone, wait=0.1)
    assert result.ok, result.explain()  # the whole call: INVITE, 200, ACK, BYE, 200
    # The caller's route set: the LB (with the caller's flow token), the proxy, the LB
    # again (with the callee's token): every in-dialog request crosses the LB twice.
    routes = re.findall(r"<sip:(?:([\w-]+)@)?127\.0\.0\.1:(\d+);lr>", result.messages)
    lb_port = str(lb_address(cluster)[1])
    tokens = {token for token, at in routes if at == lb_port}
    assert len(tokens) == 2
    # Record-Route tokens are bound to the dialog: its Call-ID and the caller's tag.
    (call_id,) = set(re.findall(r"(?im)^Call-ID:\s*(\S+)", result.messages))
    tags = tuple(set(re.findall(r"(?im)^From:.*;tag=([^;\s>]+)", result.messages)))
    flows = {TOKENS.decode(token, call_id, tags) for token in tokens}
    assert {flow.port for flow in flows if flow is not None} >= {port}
    assert all(TOKENS.decode(token) is None for token in tokens)  # worthless outside it


def send_with_route(cluster: Cluster, token: str) -> tuple[int, str]:
    ua = RawUa(lb_address(cluster))
    try:
        host, port = lb_address(cluster)
        ua.request("INVITE", "sip:victim@192.0.2.1", routes=(f"<sip:{token}@{host}:{port};lr>",))
        response = ua.expect_response(403)
        return response.status, response.reason
    finally:
        ua.close()


def test_forged_or_tampered_tokens_get_403_and_a_log_line(cluster: Cluster, tmp_path: Path) -> None:
    user, port = new_user(), free_port()
    register(cluster, tmp_path, user, port)
    (binding,) = cluster.bindings(user, DOMAIN)
    token = binding.flow or ""
    tampered = token[:6] + ("A" if token[6] != "A" else "B") + token[7:]
    for bad in ("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", tampered):
        assert send_with_route(cluster, bad) == (403, "Invalid Flow Token")
    lb = cluster.roles["lb"]
    wait_for(lambda: lb.log_text().count("flow token refused: 403") >= 2)


def test_a_broken_route_is_answered_400_not_followed(cluster: Cluster) -> None:
    ua = RawUa(lb_address(cluster))
    try:
        ua.request("INVITE", "sip:bob@example.com", routes=("<sip:@@@;lr>",))
        assert ua.expect_response(400).reason.startswith("Bad")
    finally:
        ua.close()


def test_tcp_client_is_reached_over_its_own_connection_until_it_unregisters(
    cluster: Cluster, tmp_path: Path
) -> None:
    bob = new_user()
    ua = RawUa(lb_address(cluster), "tcp")
    try:
        ua.request("REGISTER", f"sip:{DOMAIN}", user=bob, expires=600)
        ua.expect_response(200)
        (binding,) = cluster.bindings(bob, DOMAIN)
        flow = TOKENS.decode(binding.flow or "")
        assert flow is not None
        assert (flow.transport, flow.port) == ("tcp", ua.port)

        fields = tmp_path / "tcp-call.csv"
        fields.write_text(f"SEQUENTIAL\n{bob};{DOMAIN};alice\n")
        caller = start_sipp(
            "proxy_uac_auth_call",
            tmp_path,
            local_port=free_port(),
            target=lb_target_text(cluster),
            keys={},
            timeout=20,
            extra=["-inf", str(fields), "-au", "alice", "-ap", PASSWORD],
        )
        try:  # over the connection the phone registered on
            invite = ua.expect_request("INVITE", timeout=10.0)
        except AssertionError as missing:
            logs = "\n".join(
                f"--- {n}.log\n{r.log_text()[-3000:]}" for n, r in cluster.roles.items()
            )
            raise AssertionError(f"{missing}\n{sipp_report(caller, tmp_path)}\n{logs}") from None
        ua.answer(invite, 180)
        ua.answer(invite, 200)
        ua.expect_request("ACK")
        bye = ua.expect_request("BYE")
        ua.answer(bye, 200)
        assert stop_sipp(caller, wait=10) == 0

        ua.request("REGISTER", f"sip:{DOMAIN}", user=bob, expires=0)
        ua.expect_response(200)
        wait_for(lambda: ua.recv(0.2) is None and ua.closed, timeout=5)  # the LB closed it
    finally:
        ua.close()


def test_registered_flows_are_pinged_and_silence_is_noticed(
    cluster: Cluster, tmp_path: Path
) -> None:
    ua = RawUa(lb_address(cluster))
    try:
        ua.request("REGISTER", f"sip:{DOMAIN}", user=new_user(), expires=600)
        ua.expect_response(200)
        pings = []
        for _ in range(2):  # keepalive_interval_s = 1: OPTIONS from the LB's address
            ping = ua.expect_request("OPTIONS", timeout=3)
            pings.append(ping)
            ua.answer(ping, 200)
        assert pings[0].uri_text == f"sip:127.0.0.1:{ua.port}"
        assert pings[0].top_via.port == lb_address(cluster)[1]
        # It stops answering: counted and logged.
        ua.expect_request("OPTIONS", timeout=3)
        ua.expect_request("OPTIONS", timeout=3)  # not answered either
        lb = cluster.roles["lb"]
        wait_for(lambda: f"udp:127.0.0.1:{ua.port} does not answer" in lb.log_text())
    finally:
        ua.close()


def test_an_unregistered_flow_is_no_longer_pinged(cluster: Cluster, tmp_path: Path) -> None:
    ua = RawUa(lb_address(cluster))
    user = new_user()
    try:
        ua.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
        ua.expect_response(200)
        ua.answer(ua.expect_request("OPTIONS", timeout=3), 200)
        ua.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=0)
        ua.expect_response(200)
        # A ping another worker sent just before the 200 passed may still arrive after it
        # (two sockets, no ordering between them): allow for that one, then silence.
        grace = time.monotonic() + 0.5
        while (left := grace - time.monotonic()) > 0:
            message = ua.recv(left)
            if isinstance(message, Request):
                ua.answer(message, 200)
        deadline = time.monotonic() + 2.5
        while (left := deadline - time.monotonic()) > 0:
            message = ua.recv(left)
            assert not isinstance(message, Request), f"still pinged: {message!r}"
    finally:
        ua.close()


def test_a_restarted_lb_rebuilds_its_keepalive_table_from_the_database(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, overrides={"registrar": {"authenticate": False}}) as cluster:
        cluster.add_lb_target("registrar", cluster.start("registrar"))
        settings = {"id": 42, "keepalive_interval_s": 1.0, "keepalive_method": "crlf"}
        lb = cluster.start("lb", lb=settings)
        ua = RawUa(("127.0.0.1", lb.port))
        try:
            ua.request("REGISTER", f"sip:{DOMAIN}", user="carol", expires=600)
            ua.expect_response(200)
            cluster.stop_role(lb)
            port = lb.port
            again = cluster.start(
                "lb", name="lb-again", lb={**settings, "listen": _both(port)}
            )  # same address, as after a restart
            assert again.port == port
            assert ua.recv(3) == PING  # pinged without registering again
            assert "keepalive table rebuilt: 1 flows" in again.log_text()
        finally:
            ua.close()


def _both(port: int) -> list[str]:
    return [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"]


def test_options_to_the_lb_itself_is_answered(cluster: Cluster) -> None:
    ua = RawUa(lb_address(cluster))
    try:
        host, port = lb_address(cluster)
        ua.request("OPTIONS", f"sip:{host}:{port}")
        assert ua.expect_response(200).header("Allow") is not None
    finally:
        ua.close()


def test_sipfleet_up_listen_puts_the_lb_on_another_address(tmp_path: Path) -> None:
    """`sipfleet up --listen` moves the LB's client side; its Path (where the proxy reaches
    phones) and the registrar and proxy stay on loopback."""
    public = ("127.0.0.2", free_port("127.0.0.2"))
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\ncluster_secret = "{SECRET}"\n'
        f'[registrar]\nlisten = ["udp:127.0.0.1:{free_port()}"]\nauthenticate = false\n'
        f'[proxy]\nlisten = ["udp:127.0.0.1:{free_port()}"]\n'
    )
    output = tmp_path / "up.log"
    with output.open("wb") as log:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sipfleet",
                "up",
                "-c",
                str(config),
                "--listen",
                f"{public[0]}:{public[1]}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Stop with Ctrl-C" in output.read_text(errors="replace"), timeout=30)
        started = output.read_text(errors="replace")
        assert f"lb         udp:{public[0]}:{public[1]}" in started
        assert f"(toward the registrar and proxy: udp:127.0.0.1:{public[1]}" in started
        ua = RawUa(public)
        try:
            ua.request("REGISTER", f"sip:{DOMAIN}", user="dave", expires=600)
            ua.expect_response(200)
        finally:
            ua.close()
        cluster = Cluster(tmp_path / "check", dsn=f"sqlite:///{tmp_path / 'data' / 'sipfleet.db'}")
        (binding,) = cluster.bindings("dave", DOMAIN)
        assert binding.path == f"<sip:{binding.flow}@127.0.0.1:{public[1]};lr>"
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=20)
