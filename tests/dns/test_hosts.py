"""/etc/hosts before DNS: a pinned name's addresses, no query (no sockets: the resolver
has no DNS server it could ask)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sipfleet.dns.hosts import HostsFile, parse_hosts
from sipfleet.dns.resolver import DnsResolver
from sipfleet.sip.uri import SipUri, parse_uri
from sipfleet.transport.base import Destination


def test_the_file_is_read_as_the_c_library_reads_it() -> None:
    text = (
        "127.0.0.1 localhost\n# a comment\n::1 localhost ip6-localhost\n"
        "nonsense pbx\n192.0.2.7 PBX.example. pbx # pinned\n"
    )
    assert parse_hosts(text) == {
        "localhost": ["127.0.0.1", "::1"],
        "ip6-localhost": ["::1"],
        "pbx.example": ["192.0.2.7"],
        "pbx": ["192.0.2.7"],
    }


def test_a_changed_file_is_read_again_after_the_recheck_interval(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("192.0.2.7 pbx\n")
    now = [0.0]
    hosts = HostsFile(str(path), recheck=5.0, clock=lambda: now[0])
    assert hosts.addresses("PBX") == ["192.0.2.7"]
    path.write_text("192.0.2.8 pbx\n")
    os.utime(path, ns=(1, 10**18))  # a new mtime whatever the file system's resolution
    assert hosts.addresses("pbx") == ["192.0.2.7"]  # not checked again yet
    now[0] = 5.0
    assert hosts.addresses("pbx") == ["192.0.2.8"]
    path.unlink()
    now[0] = 10.0
    assert hosts.addresses("pbx") == []


def test_a_pinned_name_is_not_asked_of_dns(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("192.0.2.7 pbx.example\n::1 pbx.example\n")
    (tmp_path / "resolv.conf").write_text("")  # no server: a query would fail
    dns = DnsResolver(
        resolv_conf=str(tmp_path / "resolv.conf"), hosts=HostsFile(str(tmp_path / "hosts"))
    )
    uri = parse_uri("sip:bob@pbx.example:5070;transport=tcp")
    assert isinstance(uri, SipUri)
    assert asyncio.run(dns.destinations(uri)) == [
        Destination("tcp", "192.0.2.7", 5070),
        Destination("tcp", "::1", 5070),
    ]
    assert dns.queries == 0
