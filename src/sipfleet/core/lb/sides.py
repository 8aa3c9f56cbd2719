"""The LB's two sides: where clients reach it and where it talks to registrars and proxies.

The external side (``lb.listen``) may be a public address; the internal side
(``lb.internal_listen``) is a loopback or private address. When they are the same the LB
has one side and names it everywhere. A request crossing from one side to the other is
Record-Routed twice (RFC 3261 §16.6 step 4), once with each side's address, so each party
reaches the LB at the address it can reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sipfleet.config.listen import ListenAddress
from sipfleet.sip.uri import SipUri
from sipfleet.transport.base import TransportName
from sipfleet.transport.sockets import normalise_host

SideName = Literal["external", "internal"]
DEFAULT_PORT = 5060
DEFAULT_SIPS_PORT = 5061


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Sides:
    def __init__(
        self,
        external: Sequence[ListenAddress],
        internal: Sequence[ListenAddress] = (),
        advertise: tuple[str, int | None] | None = None,
    ) -> None:
        """``advertise``: the public (host, port or None) clients reach the external side
        at, behind 1:1 NAT; None port: each listener's own."""
        if not external:
            raise ValueError("lb.listen: at least one address is needed")
        self.external = list(external)
        self.internal = list(internal) or list(external)
        self.one_side = set(self.internal) == set(self.external)
        self.advertise = advertise
        self._ours = {(normalise_host(a.host), a.port) for a in (*self.external, *self.internal)}
        if advertise is not None:  # a Route or Request-URI naming the public address is ours
            host, port = advertise
            self._ours |= {(normalise_host(host), port or a.port) for a in self.external}
        self._internal_locals = {(a.host, a.port) for a in self.internal}
        # (side, transport, IPv6?) -> sent-by: asked for every request the LB forwards
        self._sent_bys: dict[tuple[SideName, TransportName, bool], str] = {}
        self._external_locals = {(a.host, a.port) for a in self.external}

    @property
    def listen(self) -> list[ListenAddress]:
        """Every address to bind: the external ones first (the default for sending)."""
        extra = [a for a in self.internal if a not in self.external]
        return [*self.external, *extra]

    def address(self, side: SideName, transport: TransportName, remote_host: str) -> ListenAddress:
        """This side's listener for ``transport`` in the family of ``remote_host`` (else
        any of the transport, else the side's first)."""
        addresses = self.external if side == "external" else self.internal
        ipv6 = ":" in remote_host
        of_transport = [a for a in addresses if a.transport == transport]
        for address in of_transport:
            if (":" in address.host) == ipv6:
                return address
        return (of_transport or addresses)[0]

    def sent_by(self, side: SideName, transport: TransportName, remote_host: str) -> str:
        """Our host:port in a Via or Record-Route on ``side``: the advertised public
        address on the external side when there is one."""
        key = (side, transport, ":" in remote_host)
        known = self._sent_bys.get(key)
        if known is None:
            address = self.address(side, transport, remote_host)
            advertised = self.advertise
            if side == "external" and advertised is not None:
                known = hostport(advertised[0], advertised[1] or address.port)
            else:
                known = hostport(address.host, address.port)
            self._sent_bys[key] = known
        return known

    def advertised_sent_bys(self) -> list[tuple[str, int]]:
        """(host, port) our external Vias name instead of the listeners' own, if any."""
        if self.advertise is None:
            return []
        host, port = self.advertise
        return sorted({(host, port or a.port) for a in self.external})

    def local(self, side: SideName, remote_host: str) -> tuple[str, int]:
        """The UDP socket to send from toward ``remote_host`` on ``side``."""
        address = self.address(side, "udp", remote_host)
        return address.host, address.port

    def is_ours(self, uri: SipUri) -> bool:
        """A URI naming one of our listeners (no DNS: an IP literal and its port)."""
        default = DEFAULT_SIPS_PORT if uri.scheme == "sips" else DEFAULT_PORT
        return (normalise_host(uri.host), uri.port or default) in self._ours

    def arrived_on(self, local_host: str, local_port: int) -> SideName | None:
        """The side a message came in on; None when the LB has one side (then it cannot
        tell by the socket)."""
        if self.one_side:
            return None
        if (local_host, local_port) in self._internal_locals:
            return "internal"
        if (local_host, local_port) in self._external_locals:
            return "external"
        return None

    def route_uri(
        self,
        side: SideName,
        token: str,
        transport: TransportName,
        remote_host: str,
        *,
        sips: bool = False,
        ob: bool = False,
    ) -> str:
        """``<sip:TOKEN@host:port;lr>`` naming ``side``; ``transport=tcp`` or ``tls`` when
        the party on that side talks TCP or TLS; a ``sips:`` URI when asked (a request
        that came as sips, RFC 3261 §16.6 step 4); ``ob`` (RFC 5626) when asked."""
        sent_by = self.sent_by(side, transport, remote_host)
        params = f";transport={transport}" if transport != "udp" else ""
        if ob:
            params += ";ob"
        scheme = "sips" if sips else "sip"
        return f"<{scheme}:{token}@{sent_by};lr{params}>"
