"""Next-hop URI to transport destinations: IP literals at once, names by RFC 3263.

A host name is located with NAPTR, SRV and A/AAAA (``sipfleet.dns``), asked without
blocking the loop, bounded in number and time, and cached for the records' TTLs. Every
destination found is a candidate: the core tries the next one when a branch's
destination times out, fails in transport or answers 503 (RFC 3263 §4.3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from sipfleet.core.proxy.addresses import default_port
from sipfleet.dns.down import DownList
from sipfleet.dns.resolver import DnsResolver
from sipfleet.dns.rfc3263 import DnsError
from sipfleet.sip import ParseError, parse_uri
from sipfleet.sip.uri import SipUri, Uri
from sipfleet.transport.base import Destination, TransportName
from sipfleet.transport.sockets import is_ip

TRANSPORTS: dict[str, TransportName] = {"udp": "udp", "tcp": "tcp"}
_new_tuple: Final = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path
ResolveError = DnsError  # the URI cannot be reached; ``status`` is what the branch counts as


def transport_of(uri: SipUri) -> TransportName:
    if uri.scheme == "sips":
        raise ResolveError("sips: needs TLS, which this proxy does not offer yet", 416)
    transport = TRANSPORTS.get(uri.transport)
    if transport is None:
        raise ResolveError(f"transport {uri.transport!r} is not supported")
    return transport


def literal_destination(uri: Uri) -> Destination | None:
    """The destination of a URI whose host is an IP address; None for a host name.
    Raises ResolveError for what cannot be reached at all."""
    if not isinstance(uri, SipUri):
        raise ResolveError(f"cannot route to a {uri.scheme}: URI", 416)
    transport = transport_of(uri)
    host = uri.host_bare
    if not is_ip(host):
        return None
    port = uri.port if uri.port is not None else default_port(uri.scheme)
    return _new_tuple(Destination, (transport, host, port, None, None))  # every field


class Resolver:
    """The proxy's lookups: the URIs it can route (sip:, UDP or TCP) through RFC 3263;
    destinations that did not answer lately are tried last (``down``)."""

    def __init__(
        self,
        max_concurrent: int = 32,
        timeout: float = 2.0,
        dns: DnsResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        supported = tuple(TRANSPORTS.values())
        self.dns = dns or DnsResolver(max_concurrent, timeout, supported=supported)
        self.held = DownList()
        self._clock = clock

    def down(self, destination: Destination) -> None:
        """``destination`` timed out or failed in transport: try it last for a while."""
        self.held.mark(destination, self._clock())

    async def pool_uris(self, uris: Sequence[str]) -> list[str]:
        """The proxy pool's target URIs with each name replaced by the ``sip:host:port``
        of every address it resolves to (its SRV targets), so a sibling's Record-Route is
        known as one whatever the LB was told; a name that does not resolve stays as is."""
        found: set[str] = set()
        for text in uris:
            try:
                uri = parse_uri(text)
                destinations = await self.resolve(uri)
            except (ParseError, ResolveError):
                found.add(text)
                continue
            for each in destinations:
                host = f"[{each.host}]" if ":" in each.host else each.host
                found.add(f"sip:{host}:{each.port}")
        return sorted(found)

    async def resolve(self, uri: Uri) -> list[Destination]:
        """The destinations of ``uri`` in the order to try them. Raises ResolveError."""
        destination = literal_destination(uri)
        if destination is not None:
            return [destination]
        assert isinstance(uri, SipUri)
        return self.held.order(await self.dns.destinations(uri), self._clock())
