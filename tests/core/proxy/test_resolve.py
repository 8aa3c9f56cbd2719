"""The proxy's resolver: what it makes of the LB's proxy pool (no sockets: the answers are
in its cache already, and a name that is not cannot be asked of any server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sipfleet.core.proxy.resolve import Resolver
from sipfleet.dns.hosts import HostsFile
from sipfleet.dns.records import Answer, Query, Srv
from sipfleet.dns.resolver import DnsResolver


def test_a_pool_named_by_srv_gives_its_members_as_siblings(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("")  # no server: nothing beyond the cache
    hosts = HostsFile(str(tmp_path / "hosts"))
    resolver = Resolver(dns=DnsResolver(resolv_conf=str(tmp_path / "resolv.conf"), hosts=hosts))
    now = time.monotonic()  # the resolver's clock
    srv = (Srv(10, 1, 5080, "p1.example.net"), Srv(10, 1, 5081, "p2.example.net"))
    known = {
        Query("proxies.example.net", "NAPTR"): Answer((), 60),
        Query("_sip._udp.proxies.example.net", "SRV"): Answer(srv, 60),
        Query("_sip._tcp.proxies.example.net", "SRV"): Answer((), 60),
        Query("p1.example.net", "A"): Answer(("10.0.0.1",), 60),
        Query("p1.example.net", "AAAA"): Answer((), 60),
        Query("p2.example.net", "A"): Answer(("10.0.0.2",), 60),
        Query("p2.example.net", "AAAA"): Answer(("2001:db8::2",), 60),
    }
    for query, answer in known.items():
        resolver.dns.cache.put(query, answer, now)
    uris = ["sip:proxies.example.net", "sip:10.0.0.9:5090;transport=tcp", "sip:unknown.example"]
    assert asyncio.run(resolver.pool_uris(uris)) == [
        "sip:10.0.0.1:5080",
        "sip:10.0.0.2:5081",
        "sip:10.0.0.9:5090",
        "sip:[2001:db8::2]:5081",
        "sip:unknown.example",  # not resolved: kept as it is
    ]
