"""RFC 3263 end to end, against a real DNS server (tests/dns/server.py, dnslib) in a
network namespace of the test's own, named in that namespace's resolv.conf: the LB, two
proxies, the gateways (UDP sockets of the test) and the caller all live there, and the
product reads the DNS server like a user's host (``ip netns exec`` mounts the file).

The LB's proxy pool is one target, ``sip:proxies.cluster.example``: its SRV records name
the two proxies. The proxies route every call to its Request-URI (tests/dns/relay_policy),
so a call to ``sip:+4930123@carrier.example`` goes where carrier.example's NAPTR and SRV
records say: gw1 at priority 10, gw2 at 20. A third proxy (the default policy) routes
off-net calls by LCR to the gateway "carrier", whose host is that same name.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from sipfleet.routing.lcr import PHONE
from sipfleet.sip import Request, Response, parse_message
from sipfleet.sip.builders import make_response
from sipfleet.storage.lcr_rows import Gateway as LcrGateway
from sipfleet.storage.lcr_rows import GatewayCapability, LcrRows, Rule, RuleTarget
from tests.dns.server import DnsLab, Record, dns_lab, entered
from tests.integration.harness import Cluster, RawUa, free_port, running_cluster
from tests.interop.lab import why_no_lab

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slow]

GW1, GW2, GW6 = ("127.0.0.11", 5060), ("127.0.0.12", 5060), ("::1", 5060)
DEAD = "127.0.0.13"  # nothing listens there: down.example's first gateway
T1_MS = 50  # Timer B: 64 * T1 = 3.2 s for a gateway that says nothing
TTL_S = 2
NUMBER = "+4930123"
WAIT_S = 15.0  # bound on every wait for something the cluster does on its own


CARRIER_BY_NAME = LcrRows(
    (LcrGateway("carrier", "carrier.example"),),  # no port: NAPTR and SRV say where
    (GatewayCapability("carrier", PHONE),),
    (Rule(1, "+49"),),
    (RuleTarget(1, "carrier", PHONE),),
)


def zone(p1: int, p2: int | None, ttl_host: str = GW1[0]) -> list[Record]:
    """The test's zone; ``p2`` None: the proxy pool's SRV names only p1."""
    pool = [(p1, "p1.cluster.example")] + ([(p2, "p2.cluster.example")] if p2 else [])
    return [
        (
            "carrier.example",
            "NAPTR",
            300,
            [10, 10, "s", "SIP+D2U", "", "_sip._udp.carrier.example"],
        ),
        (
            "carrier.example",
            "NAPTR",
            300,
            [20, 10, "s", "SIP+D2T", "", "_sip._tcp.carrier.example"],
        ),
        ("_sip._udp.carrier.example", "SRV", 300, [20, 0, 5060, "gw2.carrier.example"]),
        ("_sip._udp.carrier.example", "SRV", 300, [10, 0, 5060, "gw1.carrier.example"]),
        ("gw1.carrier.example", "A", 300, [GW1[0]]),
        ("down.example", "NAPTR", 300, [10, 10, "s", "SIP+D2U", "", "_sip._udp.down.example"]),
        ("_sip._udp.down.example", "SRV", 300, [10, 0, 5060, "dead.down.example"]),
        ("_sip._udp.down.example", "SRV", 300, [20, 0, 5060, "gw2.carrier.example"]),
        ("dead.down.example", "A", 300, [DEAD]),
        ("gw2.carrier.example", "A", 300, [GW2[0]]),
        ("_sip._udp.spread.example", "SRV", 300, [10, 3, 5060, "gw1.carrier.example"]),
        ("_sip._udp.spread.example", "SRV", 300, [10, 1, 5060, "gw2.carrier.example"]),
        ("ttl.example", "A", TTL_S, [ttl_host]),
        ("v6.example", "AAAA", 300, [GW6[0]]),
        *[
            ("_sip._udp.proxies.cluster.example", "SRV", TTL_S, [10, 1, port, name])
            for port, name in pool
        ],
        ("p1.cluster.example", "A", 300, ["127.0.0.1"]),
        ("p2.cluster.example", "A", 300, ["127.0.0.1"]),
    ]


class Gateway:
    """A trunk's gateway: answers each INVITE with ``status`` (its To tag: its name) and
    keeps the INVITEs it got."""

    def __init__(self, name: str, address: tuple[str, int], status: int = 200) -> None:
        self.name = name
        self.status = status
        self.invites: list[Request] = []
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_message(data)
            if not isinstance(message, Request) or message.method == "ACK":
                continue
            status = self.status if message.method == "INVITE" else 200
            if message.method == "INVITE":
                self.invites.append(message)
            response = make_response(message, status, to_tag=self.name)
            response.add_header("Contact", f"<sip:{self.name}@{source[0]}:{source[1]}>")
            self.sock.sendto(response.serialize(), source[:2])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def gateways() -> Iterator[dict[str, Gateway]]:
    """Started by each test as it needs them (``start``); all closed at its end."""
    started: dict[str, Gateway] = {}
    yield started
    for gateway in started.values():
        gateway.close()


def start(
    gateways: dict[str, Gateway], name: str, address: tuple[str, int], status: int = 200
) -> Gateway:
    gateways[name] = Gateway(name, address, status)
    return gateways[name]


class Lab:
    def __init__(self, dns: DnsLab, cluster: Cluster, ports: tuple[int, int]) -> None:
        self.dns = dns
        self.cluster = cluster
        self.proxy_ports = ports

    def lb(self) -> tuple[str, int]:
        return ("127.0.0.1", self.cluster.roles["lb"].port)

    def proxy(self, name: str = "p1") -> tuple[str, int]:
        return ("127.0.0.1", self.cluster.roles[name].port)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    why = why_no_lab()
    if why is not None:
        pytest.skip(why)
    workdir = tmp_path_factory.mktemp("dns")
    ports = (free_port(), free_port())
    with (
        dns_lab("dns", workdir, zone(*ports)) as dns,
        entered(dns.ns),
        running_cluster(workdir / "cluster") as cluster,
    ):
        proxy = {"policy": "tests.dns.relay_policy", "authenticate": False}
        for name, port in zip(("p1", "p2"), ports, strict=True):
            listen = [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}", f"udp:[::1]:{port}"]
            cluster.start(
                "proxy",
                name,
                netns=dns.ns.name,
                proxy={**proxy, "listen": listen},
                sip={"t1_ms": T1_MS},
            )
        cluster._with_storage(lambda storage: storage.lcr.replace_all(CARRIER_BY_NAME))
        cluster.start("proxy", "p3", netns=dns.ns.name, proxy={"authenticate": False})
        lb = {"probe_interval_s": 0.5, "pool_reload_s": 0.5}
        cluster.start("lb", netns=dns.ns.name, lb=lb, edge={"exempt": ["127.0.0.0/8"]})
        cluster.add_lb_target("proxy", "sip:proxies.cluster.example")
        wait_until_up(cluster, "sip:proxies.cluster.example")
        yield Lab(dns, cluster, ports)


def wait_until_up(cluster: Cluster, uri: str) -> None:
    """Until the LB reports the pool target ``uri`` up (its name resolved, a member
    answering its probes)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        views = cluster._with_storage(lambda storage: storage.lb_targets.list_health())
        if any(view.uri == uri and view.health == "up" for view in views):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{uri} not up within {WAIT_S} s:\n{cluster.roles['lb'].log_text()[-3000:]}"
    )


def call(to: tuple[str, int], uri: str) -> Response:
    """An INVITE from a phone at ``to`` (the LB or a proxy); its final response."""
    phone = RawUa(to)
    try:
        phone.request("INVITE", uri, call_id=secrets.token_hex(8))
        return phone.final_response(WAIT_S)
    finally:
        phone.close()


def test_naptr_then_srv_reaches_the_first_priority(lab: Lab, gateways: dict[str, Gateway]) -> None:
    gw1, gw2 = start(gateways, "gw1", GW1), start(gateways, "gw2", GW2)
    answer = call(lab.lb(), f"sip:{NUMBER}@carrier.example")
    assert (answer.status, answer.to.tag) == (200, "gw1")
    assert [str(invite.uri) for invite in gw1.invites] == [f"sip:{NUMBER}@carrier.example"]
    assert gw2.invites == []


def test_the_first_gateway_down_the_call_reaches_the_second(
    lab: Lab, gateways: dict[str, Gateway]
) -> None:
    gw2 = start(gateways, "gw2", GW2)
    started = time.monotonic()
    answer = call(lab.proxy(), f"sip:{NUMBER}@down.example")  # its priority 10 is dead
    assert (answer.status, answer.to.tag) == (200, "gw2")
    assert time.monotonic() - started >= 64 * T1_MS / 1000  # Timer B, then the second
    started = time.monotonic()
    answer = call(lab.proxy(), f"sip:{NUMBER}@down.example")
    assert (answer.status, answer.to.tag) == (200, "gw2")
    assert time.monotonic() - started < 64 * T1_MS / 1000 / 2  # the dead one is tried last
    assert len(gw2.invites) == 2


def test_a_503_from_the_first_gateway_the_call_reaches_the_second(
    lab: Lab, gateways: dict[str, Gateway]
) -> None:
    gw1, gw2 = start(gateways, "gw1", GW1, status=503), start(gateways, "gw2", GW2)
    answer = call(lab.lb(), f"sip:{NUMBER}@carrier.example")
    assert (answer.status, answer.to.tag) == (200, "gw2")
    assert (len(gw1.invites), len(gw2.invites)) == (1, 1)
    assert gw1.invites[0].top_via.branch != gw2.invites[0].top_via.branch  # a new transaction


def test_srv_weights_spread_the_calls(lab: Lab, gateways: dict[str, Gateway]) -> None:
    gw1, gw2 = start(gateways, "gw1", GW1), start(gateways, "gw2", GW2)
    calls = 40
    for n in range(calls):
        assert call(lab.lb(), f"sip:{NUMBER}{n}@spread.example").status == 200
    # weights 3:1: 30 of 40 expected at gw1; 22..38 holds with odds above 99.7 %
    assert len(gw1.invites) + len(gw2.invites) == calls
    assert 22 <= len(gw1.invites) <= 38, (len(gw1.invites), len(gw2.invites))


def test_a_changed_record_is_used_once_its_ttl_has_run_out(
    lab: Lab, gateways: dict[str, Gateway]
) -> None:
    gw1, gw2 = start(gateways, "gw1", GW1), start(gateways, "gw2", GW2)
    cached_at = time.monotonic()
    assert call(lab.proxy(), f"sip:{NUMBER}@ttl.example").to.tag == "gw1"  # looked up now
    lab.dns.set_records(zone(*lab.proxy_ports, ttl_host=GW2[0]))
    try:
        assert call(lab.proxy(), f"sip:{NUMBER}@ttl.example").to.tag == "gw1"  # still cached
        deadline = time.monotonic() + TTL_S + WAIT_S
        while call(lab.proxy(), f"sip:{NUMBER}@ttl.example").to.tag == "gw1":
            assert time.monotonic() < deadline, "the new address was never used"
            time.sleep(0.2)  # the next call, not a wait for a result
        switched = time.monotonic() - cached_at
    finally:
        lab.dns.set_records(zone(*lab.proxy_ports))
    assert TTL_S <= switched <= TTL_S + 3.0, switched
    assert len(gw2.invites) == 1
    assert len(gw1.invites) >= 2


def test_an_aaaa_only_name_is_reached_over_ipv6(lab: Lab, gateways: dict[str, Gateway]) -> None:
    gw6 = start(gateways, "gw6", GW6)
    answer = call(lab.proxy(), f"sip:{NUMBER}@v6.example")
    assert (answer.status, answer.to.tag) == (200, "gw6")
    assert gw6.invites[0].top_via.host == "[::1]" or gw6.invites[0].top_via.host == "::1"


def test_a_name_that_does_not_exist_fails_with_a_reason_naming_it(lab: Lab) -> None:
    answer = call(lab.lb(), f"sip:{NUMBER}@nowhere.example")
    assert answer.status == 404
    assert "nowhere.example" in answer.reason


def test_the_lb_spreads_calls_over_the_proxies_of_its_srv_target(
    lab: Lab, gateways: dict[str, Gateway]
) -> None:
    gw1 = start(gateways, "gw1", GW1)
    calls = 30
    for n in range(calls):
        assert call(lab.lb(), f"sip:{NUMBER}{n}@carrier.example").status == 200
    by_proxy = [invite.top_via.port for invite in gw1.invites]
    shares = {port: by_proxy.count(port) for port in lab.proxy_ports}
    # equal SRV weights: 15 of 30 each expected; 6..24 holds with odds above 99.9 %
    assert all(6 <= share <= 24 for share in shares.values()), shares


def test_the_management_api_shows_a_named_target_with_its_members(lab: Lab) -> None:
    found = re.search(r"management API (http://\S+/)", lab.cluster.roles["lb"].log_text())
    assert found is not None
    with urllib.request.urlopen(found.group(1) + "lb/pools", timeout=5) as answer:
        (target,) = json.load(answer)["pools"]["proxy"]
    assert (target["uri"], target["live"]) == ("sip:proxies.cluster.example", "up")
    assert sorted(m["uri"] for m in target["members"]) == sorted(
        f"sip:127.0.0.1:{port};transport=udp" for port in lab.proxy_ports
    )


def test_an_lcr_gateway_named_by_host_fails_over_across_its_srv_targets(
    lab: Lab, gateways: dict[str, Gateway]
) -> None:
    gw1, gw2 = start(gateways, "gw1", GW1, status=503), start(gateways, "gw2", GW2)
    answer = call(lab.proxy("p3"), f"sip:{NUMBER}@pstn.example")  # off-net: LCR
    assert (answer.status, answer.to.tag) == (200, "gw2")
    assert [str(i.uri) for i in gw1.invites + gw2.invites] == [f"sip:{NUMBER}@carrier.example"] * 2


def test_the_lb_follows_its_pool_name_when_its_records_change(
    lab: Lab, gateways: dict[str, Gateway]
) -> None:
    gw1 = start(gateways, "gw1", GW1)
    p1, p2 = lab.proxy_ports

    def proxies_of_calls(count: int) -> set[int]:
        first = len(gw1.invites)
        for n in range(count):
            assert call(lab.lb(), f"sip:{NUMBER}{n}@carrier.example").status == 200
        return {invite.top_via.port or 5060 for invite in gw1.invites[first:]}

    def until(wanted: Callable[[set[int]], bool]) -> None:
        deadline = time.monotonic() + TTL_S + WAIT_S
        while not wanted(proxies_of_calls(10)):  # with both in the pool, p1 alone: 1 in 1024
            assert time.monotonic() < deadline, "the LB did not follow the name's records"

    removed = f"proxy target sip:127.0.0.1:{p2};transport=udp removed"
    lab.dns.set_records(zone(p1, None))  # p2 leaves the pool's SRV records
    try:
        deadline = time.monotonic() + TTL_S + WAIT_S
        while removed not in lab.cluster.roles["lb"].log_text():
            assert time.monotonic() < deadline, "the LB kept p2 after its SRV record went"
            time.sleep(0.2)
        assert proxies_of_calls(10) == {p1}
    finally:
        lab.dns.set_records(zone(p1, p2))
    until(lambda seen: p2 in seen)  # and comes back with them
