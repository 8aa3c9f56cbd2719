"""Next-hop URI to transport destination: IP literals at once, names via getaddrinfo.

No RFC 3263 NAPTR/SRV: a host name is resolved to its addresses (A/AAAA) and the first
one is used, with the URI's port or 5060. Lookups are bounded in number and time so a
slow resolver cannot pile up work.
"""

from __future__ import annotations

import asyncio
import socket

from sipfleet.core.proxy.addresses import default_port
from sipfleet.sip.uri import SipUri, Uri
from sipfleet.transport.base import Destination, TransportName
from sipfleet.transport.sockets import is_ip

TRANSPORTS: dict[str, TransportName] = {"udp": "udp", "tcp": "tcp"}


class ResolveError(Exception):
    """The URI cannot be reached. ``status`` is what the branch counts as: 416 for a
    scheme we cannot route, 503 (a transport error) for the rest."""

    def __init__(self, reason: str, status: int = 503) -> None:
        super().__init__(reason)
        self.status = status


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
    host = uri.host_bare
    if not is_ip(host):
        return None
    port = uri.port if uri.port is not None else default_port(uri.scheme)
    return Destination(transport_of(uri), host, port)


class Resolver:
    def __init__(self, max_concurrent: int = 32, timeout: float = 2.0) -> None:
        self._slots = asyncio.Semaphore(max_concurrent)
        self._timeout = timeout

    async def resolve(self, uri: Uri) -> Destination:
        destination = literal_destination(uri)
        if destination is not None:
            return destination
        assert isinstance(uri, SipUri)
        transport = transport_of(uri)
        port = uri.port if uri.port is not None else default_port(uri.scheme)
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        loop = asyncio.get_running_loop()
        try:
            async with self._slots:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(uri.host_bare, port, type=kind), self._timeout
                )
        except (OSError, TimeoutError) as exc:
            raise ResolveError(f"{uri.host_bare}: {exc or 'timed out'}") from None
        if not infos:
            raise ResolveError(f"{uri.host_bare}: no address")
        address = infos[0][4]
        return Destination(transport, str(address[0]), int(address[1]))
