"""SIP over TLS through the LB, over real sockets: a bare TLS client (Python's ssl)
registers, calls and is called; TLS flows get keepalives and 430; the certificate is
reloaded by SIGHUP and through the management API while connections stay up."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from sipfleet.sip.flow import FlowTokens
from sipfleet.transport.tls import write_self_signed
from tests.integration.harness import (
    PING,
    SECRET,
    Cluster,
    RawUa,
    free_port,
    lb_listener,
    running_cluster,
)
from tests.mgmt.conftest import http, mgmt_url, wait_for
from tests.mgmt.test_metrics import Found, scrape, value

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
TOKENS = FlowTokens(SECRET.encode())
_users = itertools.count(1)


def new_user() -> str:
    return f"tls{next(_users)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A registrar and a proxy without digest (the bare client does not answer
    challenges), and an LB of two workers with UDP, TCP and TLS listeners."""
    workdir = tmp_path_factory.mktemp("lb-tls")
    certificate, key = workdir / "lb.crt", workdir / "lb.key"
    write_self_signed(certificate, key, ["127.0.0.1"])
    overrides = {"registrar": {"authenticate": False}, "proxy": {"authenticate": False}}
    with running_cluster(workdir, overrides=overrides) as cluster:
        cluster.add_lb_target("registrar", cluster.start("registrar"))
        cluster.add_lb_target("proxy", cluster.start("proxy"))
        port, tls_port = free_port(), free_port()
        lb = {
            "listen": [
                f"udp:127.0.0.1:{port}",
                f"tcp:127.0.0.1:{port}",
                f"tls:127.0.0.1:{tls_port}",
            ],
            "tls_certificate": str(certificate),
            "tls_key": str(key),
            "probe_interval_s": 1.0,
            "pool_reload_s": 0.5,
            "keepalive_interval_s": 1.0,
        }
        cluster.start("lb", lb=lb, node={"workers": 2})
        yield cluster


def certificate_paths(cluster: Cluster) -> tuple[Path, Path]:
    lb = cluster.roles["lb"].config.lb
    return Path(lb.tls_certificate), Path(lb.tls_key)


def serial_of(ua: RawUa) -> int:
    return x509.load_der_x509_certificate(ua.certificate).serial_number


def registered(cluster: Cluster, user: str) -> RawUa:
    ua = RawUa(lb_listener(cluster, "tls"), "tls")
    ua.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
    ua.expect_response(200)
    return ua


def test_a_tls_client_registers_calls_and_is_called_over_its_connection(cluster: Cluster) -> None:
    alice, bob = new_user(), new_user()
    caller, callee = registered(cluster, alice), registered(cluster, bob)
    try:
        (binding,) = cluster.bindings(bob, DOMAIN)
        flow = TOKENS.decode(binding.flow or "")
        assert flow is not None
        assert (flow.transport, flow.port) == ("tls", callee.port)
        assert "transport=tls" in binding.contact

        call_id = caller.request("INVITE", f"sip:{bob}@{DOMAIN}", user=alice)
        invite = callee.expect_request("INVITE", timeout=10)
        assert invite.call_id == call_id
        assert invite.top_via.transport == "TLS"  # the LB's Via toward the callee
        host, port = lb_listener(cluster, "tls")
        record_routes = invite.header_values("record-route")
        assert f"@{host}:{port};lr;transport=tls>" in record_routes[0]
        callee.answer(invite, 180)
        callee.answer(invite, 200)
        ok = caller.expect_response(200, timeout=10)
        assert any(";transport=tls>" in value for value in ok.header_values("record-route"))
    finally:
        caller.close()
        callee.close()


def test_a_tls_flow_is_pinged_and_closed_when_unregistered(cluster: Cluster) -> None:
    user = new_user()
    ua = registered(cluster, user)
    try:
        assert ua.recv(3) == PING  # CRLFCRLF over TLS (keepalive_interval_s = 1)
        ua.send(b"\r\n")  # the pong
        ua.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=0)
        ua.expect_response(200)
        wait_for(lambda: ua.recv(0.2) is None and ua.closed, 5, "the LB closes the flow")
    finally:
        ua.close()


def test_a_call_to_a_tls_flow_whose_connection_is_gone_fails_with_480(cluster: Cluster) -> None:
    gone = new_user()
    registered(cluster, gone).close()  # registered, then its connection closes
    caller = RawUa(("127.0.0.1", cluster.roles["lb"].port))
    try:
        caller.request("INVITE", f"sip:{gone}@{DOMAIN}", user=new_user())
        answer = caller.final_response(10.0)
        # The flow cannot be reached, and a TLS connection is never opened toward a phone.
        # The LB answers the proxy 430 Flow Failed (RFC 5626 §5.3); with no other flow of
        # the phone the proxy tells the caller 480: a 430 is for proxies (§11.5).
        assert answer.status == 480, f"{answer.status} {answer.reason}"
        assert cluster.bindings(gone, DOMAIN)  # registered still: not "no binding"
    finally:
        caller.close()


def renew(cluster: Cluster, tmp_path: Path, name: str) -> int:
    """New certificate files in place (as an ACME client renews); the new serial."""
    certificate, key = certificate_paths(cluster)
    loaded = write_self_signed(tmp_path / f"{name}.crt", tmp_path / f"{name}.key", ["127.0.0.1"])
    os.replace(tmp_path / f"{name}.key", key)
    os.replace(tmp_path / f"{name}.crt", certificate)
    return loaded.serial


def serial_of_a_new_connection(cluster: Cluster) -> int:
    ua = RawUa(lb_listener(cluster, "tls"), "tls")
    ua.close()
    return serial_of(ua)


def test_sighup_and_the_api_reload_the_certificate_and_old_connections_go_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    user = new_user()
    old = registered(cluster, user)
    lb = cluster.roles["lb"]
    url = mgmt_url(cluster, "lb")
    try:
        first = serial_of(old)
        # SIGHUP to the LB's supervisor: every worker reloads (two workers: new
        # connections land on either, so several are opened).
        renewed = renew(cluster, tmp_path, "one")
        assert lb.process is not None
        lb.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: {serial_of_a_new_connection(cluster) for _ in range(6)} == {renewed},
            10,
            "new connections get the certificate reloaded on SIGHUP",
        )
        old.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
        old.expect_response(200)  # the connection made before the reload carries on
        assert serial_of(old) == first

        # Through the API: the answer names the new serial.
        again = renew(cluster, tmp_path, "two")
        status, answer = http(f"{url}/tls/reload", "POST")
        assert status == 200, answer
        assert answer["serial"] == f"{again:x}"
        wait_for(
            lambda: {serial_of_a_new_connection(cluster) for _ in range(6)} == {again},
            10,
            "new connections get the certificate reloaded through the API",
        )

        # A key that does not belong to the certificate: 422 naming it, the old one stays.
        write_self_signed(tmp_path / "x.crt", tmp_path / "x.key", ["127.0.0.1"])
        os.replace(tmp_path / "x.key", certificate_paths(cluster)[1])
        status, answer = http(f"{url}/tls/reload", "POST")
        assert status == 422
        assert answer["error"].startswith("lb.tls_key: ")
        assert serial_of_a_new_connection(cluster) == again
        old.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
        old.expect_response(200)

        # Each worker publishes its counts once a second and worker 0 answers /metrics
        # with their sum: the other worker's latest connections show within a second.
        def counted() -> Found | None:
            found = scrape(url)[1]
            failed = value(found, "sipfleet_tls_reloads_total", role="lb", result="failed")
            accepted = value(found, "sipfleet_tls_connections_total", role="lb")
            return found if failed >= 1 and accepted >= 14 else None

        found = wait_for(counted, 10, "the failed reload and 14 connections in /metrics")
        assert value(found, "sipfleet_tls_reloads_total", role="lb", result="ok") >= 3
        expiry = value(found, "sipfleet_tls_certificate_expiry_timestamp_seconds", role="lb")
        ten_years = time.time() + 3650 * 86400  # write_self_signed's default, from now
        assert abs(expiry - ten_years) < 2 * 86400
    finally:
        old.close()


def test_sighup_does_not_stop_a_role_without_a_certificate(cluster: Cluster) -> None:
    """`systemctl reload` sends SIGHUP to every role (examples/cluster/systemd)."""
    registrar = cluster.roles["registrar"].process
    assert registrar is not None
    registrar.send_signal(signal.SIGHUP)
    user = new_user()
    registered(cluster, user).close()  # the registrar still answers
    assert registrar.poll() is None
