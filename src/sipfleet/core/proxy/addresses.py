"""Which addresses are this proxy: for its own Route / Record-Route, and for loop detection.

A URI names the proxy when its host and port (5060 when absent, 5061 for sips) are one
of the listen addresses or a configured alias. Hosts compare case-insensitively and
IPv6 by address, so ``[0:0::1]`` is ``[::1]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sipfleet.sip.uri import SipUri
from sipfleet.sip.via import Via
from sipfleet.transport.sockets import normalise_host

SIP_PORT = 5060
SIPS_PORT = 5061


def default_port(scheme: str) -> int:
    return SIPS_PORT if scheme == "sips" else SIP_PORT


def split_alias(alias: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    text = alias.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text and not port_text.isdigit():
        raise ValueError(f"proxy.aliases: {alias!r} has a bad port")
    return normalise_host(host).lower(), int(port_text) if port_text else None


@dataclass(frozen=True, slots=True)
class OwnAddresses:
    """The (host, port) pairs that are this proxy; hosts normalised and lower case."""

    hostports: frozenset[tuple[str, int]]
    # Other proxies of the pool (from lb_target): their Record-Route is taken as ours, so a
    # dialog outlives the proxy that started it. Not used for loop detection.
    siblings: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def build(cls, listen: Iterable[tuple[str, int]], aliases: Iterable[str] = ()) -> OwnAddresses:
        """``listen``: the bound (host, port) pairs. An alias without a port is the proxy
        on every listen port and on 5060."""
        bound = [(normalise_host(host).lower(), port) for host, port in listen]
        ports = {port for _, port in bound} | {SIP_PORT}
        pairs = set(bound)
        for alias in aliases:
            host, port = split_alias(alias)
            pairs.update([(host, port)] if port is not None else [(host, p) for p in ports])
        return cls(frozenset(pairs))

    def with_siblings(self, uris: Iterable[str]) -> OwnAddresses:
        """The same addresses, with these pool members' (``sip:host:port``) as siblings."""
        pairs = set()
        for uri in uris:
            host, port = split_alias(uri.split(":", 1)[1] if ":" in uri else uri)
            pairs.add((host, port if port is not None else SIP_PORT))
        return OwnAddresses(self.hostports, frozenset(pairs))

    def names(self, uri: SipUri) -> bool:
        """Whether ``uri`` addresses this proxy or a sibling (its user part is not looked at)."""
        port = uri.port if uri.port is not None else default_port(uri.scheme)
        pair = (normalise_host(uri.host).lower(), port)
        return pair in self.hostports or pair in self.siblings

    def sent(self, via: Via) -> bool:
        """Whether a Via carries one of our sent-by values (we forwarded that request)."""
        port = via.port if via.port is not None else SIP_PORT
        return (normalise_host(via.host).lower(), port) in self.hostports
