"""The proxy's resolver: what it makes of the LB's proxy pool (no sockets: the answers are
in its cache already, and a name that is not cannot be asked of any server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sipfleet.core.proxy.core import response_destination
from sipfleet.core.proxy.resolve import ResolveError, Resolver, literal_destination
from sipfleet.dns.hosts import HostsFile
from sipfleet.dns.records import Answer, Query, Srv
from sipfleet.dns.resolver import DnsResolver
from sipfleet.sip import parse_uri
from sipfleet.transport.base import Destination, Peer
from tests.core.proxy.messages import request


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


def test_a_literal_destination_is_a_whole_destination() -> None:
    """Built without NamedTuple's __new__: every field must still be there."""
    found = literal_destination(parse_uri("sip:bob@192.0.2.4:5070;transport=tcp"))
    assert found == Destination("tcp", "192.0.2.4", 5070)
    assert isinstance(found, Destination)
    assert (found.connection_id, found.local) == (None, None)
    assert literal_destination(parse_uri("sip:[2001:db8::1]")) == Destination(
        "udp", "2001:db8::1", 5060
    )
    assert literal_destination(parse_uri("sip:bob@example.com")) is None
    with pytest.raises(ResolveError):
        literal_destination(parse_uri("tel:+1555"))


def test_responses_go_to_the_via_port_or_the_source_port_with_rport() -> None:
    peer = Peer("udp", "198.51.100.7", 40000, "192.0.2.1", 5060)
    plain = response_destination(request(via="SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK1"), peer)
    assert plain == Destination("udp", "198.51.100.7", 5062, None, ("192.0.2.1", 5060))
    assert isinstance(plain, Destination)
    rport = request(via="SIP/2.0/UDP 198.51.100.7:5062;rport;branch=z9hG4bK1")
    assert response_destination(rport, peer).port == 40000
    default = request(via="SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1")
    assert response_destination(default, peer).local == ("192.0.2.1", 5060)
    assert response_destination(default, peer).port == 5060
