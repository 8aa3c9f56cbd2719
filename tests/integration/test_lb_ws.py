"""SIP over WebSocket (RFC 7118) through the LB, over real sockets: a bare WebSocket
client (wsproto) that behaves like a browser (its Via and Contact name a made-up
``.invalid`` host) registers, calls a UDP phone and is called by it; WebSocket flows get
keepalives (WebSocket Pings) and 430 once their connection is gone."""

from __future__ import annotations

import itertools
import secrets
import socket
from collections.abc import Iterator

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from sipfleet.sip import parse_message
from sipfleet.sip.flow import FlowTokens
from tests.integration.harness import (
    PING,
    SECRET,
    Cluster,
    RawUa,
    free_port,
    lb_listener,
    running_cluster,
)
from tests.mgmt.conftest import mgmt_url, wait_for
from tests.mgmt.test_metrics import Found, scrape, value

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
TOKENS = FlowTokens(SECRET.encode())
_users = itertools.count(1)


def new_user() -> str:
    return f"ws{next(_users)}"


class WsUa(RawUa):
    """RawUa over a WebSocket: one SIP message per text message; the LB's WebSocket
    Pings are answered (as a browser does by itself) and reported as PING."""

    def __init__(self, lb: tuple[str, int]) -> None:
        self.lb = lb
        self.transport = "ws"
        self.sock = socket.create_connection(lb, timeout=5)
        self.host, self.port = self.sock.getsockname()[:2]
        self.invalid_host = f"{secrets.token_hex(6)}.invalid"  # as JsSIP makes one up
        self._queue = []
        self.closed = False
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._text: list[str] = []
        self.close_code: int | None = None
        handshake = Request(host=f"{lb[0]}:{lb[1]}", target="/", subprotocols=["sip"])
        self.sock.sendall(self._ws.send(handshake))
        self._accepted = False
        wait_for(lambda: self.recv(0.2) or self._accepted or self.closed, 5, "the handshake")
        assert self._accepted, "the LB refused the WebSocket handshake"

    def request(self, method: str, uri: str, **options: object) -> str:  # type: ignore[override]
        return super().request(method, uri, via_host=self.invalid_host, **options)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.sock.sendall(self._ws.send(TextMessage(data=data.decode())))

    def _take(self, data: bytes) -> None:
        if not data:
            self.closed = True
            return
        self._ws.receive_data(data)
        for event in self._ws.events():
            if isinstance(event, AcceptConnection):
                self._accepted = True
            elif isinstance(event, RejectConnection):
                self.closed = True
            elif isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self._queue.append(parse_message("".join(self._text).encode()))
                    self._text.clear()
            elif isinstance(event, Ping):
                self.sock.sendall(self._ws.send(event.response()))
                self._queue.append(PING)
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                self.closed = True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A registrar and a proxy without digest (the bare clients do not answer
    challenges), and an LB of two workers with UDP, TCP and WS listeners."""
    workdir = tmp_path_factory.mktemp("lb-ws")
    overrides = {"registrar": {"authenticate": False}, "proxy": {"authenticate": False}}
    with running_cluster(workdir, overrides=overrides) as cluster:
        cluster.add_lb_target("registrar", cluster.start("registrar"))
        cluster.add_lb_target("proxy", cluster.start("proxy"))
        port, ws_port = free_port(), free_port()
        lb = {
            "listen": [
                f"udp:127.0.0.1:{port}",
                f"tcp:127.0.0.1:{port}",
                f"ws:127.0.0.1:{ws_port}",
            ],
            "probe_interval_s": 1.0,
            "pool_reload_s": 0.5,
            "keepalive_interval_s": 1.0,
        }
        cluster.start("lb", lb=lb, node={"workers": 2})
        yield cluster


def udp_address(cluster: Cluster) -> tuple[str, int]:
    return "127.0.0.1", cluster.roles["lb"].port


def registered_ws(cluster: Cluster, user: str) -> WsUa:
    ua = WsUa(lb_listener(cluster, "ws"))
    ua.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
    ua.expect_response(200)
    return ua


def registered_udp(cluster: Cluster, user: str) -> RawUa:
    ua = RawUa(udp_address(cluster))
    ua.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
    ua.expect_response(200)
    return ua


def test_a_browser_like_client_registers_and_its_flow_is_its_only_way_in(cluster) -> None:
    user = new_user()
    ua = registered_ws(cluster, user)
    try:
        (binding,) = cluster.bindings(user, DOMAIN)
        assert ".invalid" in binding.contact  # stored as sent: it reaches nobody
        assert binding.path is not None  # the LB, as the proxy reaches it (UDP here)
        assert binding.flow is not None
        assert binding.flow in binding.path
        flow = TOKENS.decode(binding.flow or "")
        assert flow is not None
        assert (flow.transport, flow.port, flow.reach_by_flow) == ("ws", ua.port, True)
    finally:
        ua.close()


def test_a_ws_client_calls_a_udp_phone_and_is_called_by_it(cluster) -> None:
    alice, bob = new_user(), new_user()
    browser, phone = registered_ws(cluster, alice), registered_udp(cluster, bob)
    host, port = lb_listener(cluster, "ws")
    try:
        # browser -> phone
        call_id = browser.request("INVITE", f"sip:{bob}@{DOMAIN}", user=alice)
        invite = phone.expect_request("INVITE", timeout=10)
        assert invite.call_id == call_id
        record_routes = invite.header_values("record-route")
        assert f"@{host}:{port};lr;transport=ws>" in record_routes[-1]  # toward the browser
        phone.answer(invite, 180)
        phone.answer(invite, 200)
        ok = browser.expect_response(200, timeout=10)
        assert ok.call_id == call_id

        # phone -> browser: down the WebSocket, the LB's Via saying WS
        call_id = phone.request("INVITE", f"sip:{alice}@{DOMAIN}", user=bob)
        invite = browser.expect_request("INVITE", timeout=10)
        assert invite.call_id == call_id
        assert invite.top_via.transport == "WS"
        assert f"@{host}:{port};lr;transport=ws>" in invite.header_values("record-route")[0]
        browser.answer(invite, 200)
        assert phone.expect_response(200, timeout=10).call_id == call_id
    finally:
        browser.close()
        phone.close()


def test_a_ws_flow_is_pinged_and_closed_when_unregistered(cluster) -> None:
    user = new_user()
    ua = registered_ws(cluster, user)
    try:
        assert ua.recv(3) == PING  # a WebSocket Ping (keepalive_interval_s = 1), answered
        ua.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=0)
        ua.expect_response(200)
        wait_for(lambda: ua.recv(0.2) is None and ua.closed, 5, "the LB closes the flow")
        assert ua.close_code == 1000  # with a WebSocket Close, not a bare FIN
    finally:
        ua.close()


def test_a_call_to_a_ws_flow_whose_connection_is_gone_fails_with_480(cluster) -> None:
    gone = new_user()
    registered_ws(cluster, gone).close()  # registered, then the tab is closed
    caller = RawUa(udp_address(cluster))
    try:
        caller.request("INVITE", f"sip:{gone}@{DOMAIN}", user=new_user())
        answer = caller.final_response(10.0)
        # Its Contact is a made-up .invalid host: the flow was the only way to reach it
        # The LB answers the proxy 430 Flow Failed (RFC 5626 §5.3); with no other flow of
        # the phone the proxy tells the caller 480: a 430 is for proxies (§11.5).
        assert answer.status == 480, f"{answer.status} {answer.reason}"
        assert cluster.bindings(gone, DOMAIN)  # registered still: not "no binding"
    finally:
        caller.close()


def test_a_handshake_without_sip_is_refused(cluster) -> None:
    with socket.create_connection(lb_listener(cluster, "ws"), timeout=5) as sock:
        client = WSConnection(ConnectionType.CLIENT)
        sock.sendall(client.send(Request(host="lb", target="/", subprotocols=["chat"])))
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"must offer 'sip'" in answer
    WsUa(lb_listener(cluster, "ws")).close()  # and one accepted

    def counted() -> Found | None:  # the LB has two workers: summed over both
        found = scrape(mgmt_url(cluster, "lb"))[1]
        handshakes = "sipfleet_websocket_handshakes_total"
        refused = value(found, handshakes, role="lb", result="refused")
        accepted = value(found, handshakes, role="lb", result="accepted")
        return found if refused >= 1 and accepted >= 1 else None

    wait_for(counted, 10, "the handshakes counted in /metrics")
