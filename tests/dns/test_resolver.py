"""The asyncio shell on dnspython, against the test's DNS server in a namespace of its own
(tests/dns/server.py): what it asks the server, what its cache spares it, and that a
server that never answers costs a bounded wait and never blocks the loop. Its clock is
the test's, so TTLs run out when the test says."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.dns.resolver import DnsResolver
from sipfleet.dns.rfc3263 import DnsError
from sipfleet.sip.uri import SipUri, parse_uri
from sipfleet.transport.base import Destination
from tests.dns.server import SOA_MINIMUM, DnsLab, Record, dns_lab, entered
from tests.interop.lab import why_no_lab

pytestmark = [pytest.mark.netns]

TTL_S = 60
ZONE: list[Record] = [
    ("carrier.example", "NAPTR", TTL_S, [10, 10, "s", "SIP+D2T", "", "_sip._tcp.carrier.example"]),
    ("_sip._tcp.carrier.example", "SRV", TTL_S, [10, 0, 5080, "gw1.carrier.example"]),
    ("gw1.carrier.example", "A", TTL_S, ["192.0.2.1"]),
    ("alias.example", "CNAME", 3, ["gw1.carrier.example"]),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsLab]:
    why = why_no_lab()
    if why is not None:
        pytest.skip(why)
    with dns_lab("res", tmp_path_factory.mktemp("resolver"), ZONE) as lab, entered(lab.ns):
        yield lab


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(lab: DnsLab, clock: Clock, **options: float) -> DnsResolver:
    return DnsResolver(clock=clock, resolv_conf=f"/etc/netns/{lab.ns.name}/resolv.conf", **options)  # type: ignore[arg-type]


def uri(text: str) -> SipUri:
    parsed = parse_uri(text)
    assert isinstance(parsed, SipUri)
    return parsed


CARRIER = uri("sip:+4930123@carrier.example")
QUERIES = [
    "carrier.example NAPTR",
    "_sip._tcp.carrier.example SRV",
    "gw1.carrier.example A",
    "gw1.carrier.example AAAA",
]


def test_answers_are_kept_for_their_ttl_and_no_data_for_the_soa_minimum(lab: DnsLab) -> None:
    clock = Clock()
    dns = resolver(lab, clock)
    before = len(lab.queries())

    def asked_after(advance: float) -> list[str]:
        clock.now += advance
        start = len(lab.queries())
        assert asyncio.run(dns.destinations(CARRIER)) == [Destination("tcp", "192.0.2.1", 5080)]
        return lab.queries()[start:]

    assert asked_after(0) == QUERIES
    assert asked_after(SOA_MINIMUM - 1) == []  # all from the cache
    assert asked_after(1) == ["gw1.carrier.example AAAA"]  # it has none: kept 5 s
    assert asked_after(TTL_S - SOA_MINIMUM) == QUERIES  # the records' TTL ran out
    assert len(lab.queries()) - before == 2 * len(QUERIES) + 1


def test_one_query_however_many_calls_ask_at_once(lab: DnsLab) -> None:
    dns = resolver(lab, Clock())
    before = len(lab.queries())

    async def many() -> list[list[Destination]]:
        return await asyncio.gather(*(dns.destinations(CARRIER) for _ in range(20)))

    assert all(found == [Destination("tcp", "192.0.2.1", 5080)] for found in asyncio.run(many()))
    assert lab.queries()[before:] == QUERIES


def test_a_name_that_does_not_exist_is_cached_for_the_soa_minimum(lab: DnsLab) -> None:
    clock = Clock()
    dns = resolver(lab, clock)
    before = len(lab.queries())
    for advance in (0, SOA_MINIMUM - 0.5, 1):
        clock.now += advance
        with pytest.raises(DnsError) as caught:
            asyncio.run(dns.destinations(uri("sip:bob@nowhere.example")))
        assert (caught.value.status, caught.value.reason) == (
            404,
            "nowhere.example does not exist in DNS",
        )
    assert lab.queries()[before:] == ["nowhere.example NAPTR"] * 2  # the 2nd from the cache


def test_a_silent_server_costs_the_timeout_and_never_blocks_the_loop(
    lab: DnsLab, tmp_path: Path
) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.2", 53))  # takes the queries, answers none
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.2\n")
    dns = DnsResolver(timeout=0.5, resolv_conf=str(conf))
    gaps: list[float] = []

    async def lookup_while_ticking() -> DnsError:
        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        try:
            await dns.destinations(CARRIER)
        except DnsError as exc:
            return exc
        finally:
            ticker.cancel()
        raise AssertionError("a silent server gave an answer")

    started = time.monotonic()
    try:
        error = asyncio.run(lookup_while_ticking())
    finally:
        silent.close()
    assert error.status == 503
    assert "timed out" in error.reason
    assert 0.5 <= time.monotonic() - started < 2.0
    assert max(gaps) < 0.25  # the loop ran all along (a blocking lookup: one gap of 0.5 s)


def test_an_alias_is_kept_for_the_shortest_ttl_of_its_chain(lab: DnsLab) -> None:
    clock = Clock()
    dns = resolver(lab, clock)
    alias = uri("sip:bob@alias.example:5070")  # a port: addresses only
    before = len(lab.queries())
    for advance in (0, 2.5, 0.5):
        clock.now += advance
        assert asyncio.run(dns.destinations(alias)) == [Destination("udp", "192.0.2.1", 5070)]
    asked = lab.queries()[before:]
    assert asked.count("alias.example A") == 2  # the CNAME's 3 s, not the A record's 60 s


def test_a_changed_resolv_conf_is_read_again(lab: DnsLab, tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.3\n")  # nothing there
    clock = Clock()
    dns = DnsResolver(timeout=0.5, clock=clock, resolv_conf=str(conf))
    with pytest.raises(DnsError) as caught:
        asyncio.run(dns.destinations(CARRIER))
    assert caught.value.status == 503
    conf.write_text("nameserver 127.0.0.1\n")
    os.utime(conf, ns=(1, 10**18))  # a new mtime whatever the file system's resolution
    clock.now += 5
    assert asyncio.run(dns.destinations(CARRIER)) == [Destination("tcp", "192.0.2.1", 5080)]
