"""What RFC 3263 costs the proxy per request to a host name once the records are cached
(docs/operations.md, "DNS (RFC 3263)"): NAPTR -> SRV (three targets, weighted) -> A/AAAA,
answered from the resolver's cache, the SRV order drawn anew each time.

    .venv/bin/python bench/dns_lookup.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipfleet.dns.hosts import HostsFile
from sipfleet.dns.records import Answer, Naptr, Query, Srv
from sipfleet.dns.resolver import DnsResolver
from sipfleet.sip.uri import SipUri, parse_uri

LOOKUPS = 20_000
TTL_S = 3600.0
SRV = (
    Srv(10, 3, 5060, "gw1.carrier.example"),
    Srv(10, 1, 5060, "gw2.carrier.example"),
    Srv(20, 0, 5060, "gw3.carrier.example"),
)
RECORDS = {
    Query("carrier.example", "NAPTR"): Answer(
        (Naptr(10, 10, "s", "SIP+D2U", "_sip._udp.carrier.example"),), TTL_S
    ),
    Query("_sip._udp.carrier.example", "SRV"): Answer(SRV, TTL_S),
    **{Query(f"gw{n}.carrier.example", "A"): Answer((f"192.0.2.{n}",), TTL_S) for n in (1, 2, 3)},
    **{Query(f"gw{n}.carrier.example", "AAAA"): Answer((), TTL_S) for n in (1, 2, 3)},
}


async def measure(dns: DnsResolver, uri: SipUri) -> float:
    started = time.perf_counter()
    for _ in range(LOOKUPS):
        await dns.destinations(uri)
    return (time.perf_counter() - started) / LOOKUPS


def main() -> None:
    with tempfile.TemporaryDirectory() as empty:
        hosts = HostsFile(str(Path(empty) / "hosts"))  # no pinned names: DNS's records
        dns = DnsResolver(resolv_conf=str(Path(empty) / "resolv.conf"), hosts=hosts)
        now = time.monotonic()
        for query, answer in RECORDS.items():
            dns.cache.put(query, answer, now)
        uri = parse_uri("sip:+4930123@carrier.example")
        assert isinstance(uri, SipUri)
        each = asyncio.run(measure(dns, uri))
    assert dns.queries == 0, "a lookup left the cache"
    print(f"cached NAPTR+SRV+A lookup: {each * 1e6:.1f} us ({LOOKUPS} lookups, 3 SRV targets)")


if __name__ == "__main__":
    main()
