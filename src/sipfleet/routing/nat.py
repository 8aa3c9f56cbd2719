"""Is a client behind NAT? The checks of Kamailio's nat_uac_test, as named predicates.

The LB uses the answer to decide how a client is reached: through its flow (the address
and port its packets came from) or at its Contact.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Request
from sipfleet.sip.uri import SipUri

# RFC 1918, RFC 6598 shared space (carrier-grade NAT), link-local, and IPv6 ULA/link-local.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


# The IPv4 ones as (network, mask) integers: the check every request through the LB makes
# (ipaddress objects cost several microseconds an address).
_PRIVATE_V4 = tuple(
    (int(net.network_address), int(net.netmask))
    for net in _PRIVATE_NETWORKS
    if isinstance(net, ipaddress.IPv4Network)
)


def is_private(host: str) -> bool:
    """True for an address that cannot be reached from the public Internet."""
    if ":" not in host and "[" not in host:
        v4 = _ipv4(host)
        if v4 is None:
            return False  # a host name: not evidence of NAT by itself
        return any(v4 & mask == network for network, mask in _PRIVATE_V4)
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(address in network for network in _PRIVATE_NETWORKS)


def _ipv4(host: str) -> int | None:
    """A dotted-quad IPv4 address as an integer; None for anything else."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class NatEvidence:
    via_address_differs: bool  # top Via sent-by host is not the source address
    via_port_differs: bool  # top Via port is not the source port
    private_contact: bool  # a Contact names a private address while the source is public

    @property
    def behind_nat(self) -> bool:
        return self.via_address_differs or self.via_port_differs or self.private_contact


def nat_evidence(request: Request, source_host: str, source_port: int) -> NatEvidence:
    """Compare what the request says about its sender with where it came from."""
    try:
        via = request.top_via
        via_host = via.host.strip("[]")
        via_port = via.port or 5060
        hosts = contact_hosts(request)
    except ParseError:
        return NatEvidence(True, True, False)  # a sender we cannot read is reached as seen
    return NatEvidence(
        via_address_differs=_differs(via_host, source_host),
        via_port_differs=via_port != source_port,
        private_contact=not is_private(source_host) and any_private(hosts),
    )


def contact_hosts(request: Request) -> list[str]:
    """The hosts of the request's SIP Contacts (ParseError as ``request.contacts`` and
    each Contact's URI raise it)."""
    return [c.uri.host_bare for c in request.contacts if isinstance(c.uri, SipUri)]


def any_private(hosts: list[str]) -> bool:
    return any(is_private(host) for host in hosts)


def behind_nat(
    via_host: str, via_port: int, private_hosts: bool, source_host: str, source_port: int
) -> bool:
    """``nat_evidence(...).behind_nat`` from its parts, without the object: the top Via's
    host (no brackets) and port (5060 when none is written), whether a Contact names a
    private host (``any_private``), and the source."""
    if via_port != source_port or _differs(via_host, source_host):
        return True
    return private_hosts and not is_private(source_host)


def _differs(claimed: str, seen: str) -> bool:
    if claimed == seen:  # the usual client: written as the socket reports it
        return False
    try:
        return ipaddress.ip_address(claimed) != ipaddress.ip_address(seen)
    except ValueError:
        return True  # a host name in Via never equals an address we saw
