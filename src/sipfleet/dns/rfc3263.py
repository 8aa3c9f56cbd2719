"""Locating a SIP server (RFC 3263 §4), sans-IO: a URI and DNS records in, ordered
destinations out.

The procedure reads records through ``answers`` (a cache, or a test's dict) and, when
one it needs is not there, returns ``Need`` with every query it can ask at this step;
the shell asks them and calls again (three rounds at most: NAPTR, SRV, addresses).

- A numeric host: no lookup. The URI's transport, else UDP (TLS for sips).
- An explicit port: A/AAAA only, no SRV (§4.2); the transport as above.
- An explicit transport: SRV for that transport, no NAPTR (§4.1).
- Otherwise NAPTR: the SIP+D2U / SIP+D2T / SIPS+D2T records of a transport we support,
  in order then preference (§4.1), each naming an SRV name. Without any, SRV for each
  transport we support, UDP first. Without SRV records, A/AAAA of the host itself on
  5060 (5061 for sips) with UDP (TLS for sips).
- SRV: priority ascending; within a priority, weighted random order (RFC 2782) drawn
  with ``pick``, injected so tests are exact. Each target's A then AAAA addresses.

Every destination of the result is a failover candidate (§4.3): the next is tried when
one times out, fails in transport or answers 503.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sipfleet.dns.records import Answer, Naptr, Query, Srv, domain
from sipfleet.sip.uri import SipUri
from sipfleet.transport.base import Destination, TransportName
from sipfleet.transport.sockets import is_ip

Answers = Callable[[Query], Answer | None]
Pick = Callable[[int], int]  # pick(total): a uniform integer in 0..total
SRV_PREFIX: dict[TransportName, str] = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
NAPTR_SERVICES: dict[str, TransportName] = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SIP_PORT, SIPS_PORT = 5060, 5061


class DnsError(Exception):
    """No destination for a URI. ``status`` is what a branch toward it counts as: 404
    when DNS has no SIP server for the name, 503 when DNS could not be asked, 416 for
    a URI that needs a transport we do not offer."""

    def __init__(self, reason: str, status: int = 503) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    """What a SIP URI says about where it goes (§4: host, port, transport, sips)."""

    host: str  # lower case, no brackets
    port: int | None
    transport: TransportName | None
    secure: bool

    @classmethod
    def of(cls, uri: SipUri, supported: Sequence[TransportName] = ("udp", "tcp")) -> Target:
        """Raises DnsError for a transport we cannot use (416 for sips without TLS)."""
        secure = uri.scheme == "sips"
        if secure and "tls" not in supported:
            raise DnsError("sips: needs TLS, which is not offered here", 416)
        transport: TransportName | None = None
        if "transport" in uri.params:
            named = uri.transport
            if named == "tcp" and secure:
                named = "tls"  # sips over TCP is TLS (§26.2.1)
            if named not in supported:
                raise DnsError(f"transport {uri.transport!r} is not supported", 416)
            transport = named  # type: ignore[assignment]
        return cls(uri.host_bare, uri.port, transport, secure)

    @property
    def default_transport(self) -> TransportName:
        return self.transport or ("tls" if self.secure else "udp")

    @property
    def default_port(self) -> int:
        return SIPS_PORT if self.secure or self.transport == "tls" else SIP_PORT


@dataclass(frozen=True, slots=True)
class Need:
    """Records the procedure needs before it can go on: ask these, then call again."""

    queries: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Located:
    """One destination and the SRV record it came from (priority 0, weight 0 without)."""

    destination: Destination
    priority: int = 0
    weight: int = 0


@dataclass(frozen=True, slots=True)
class _Server:
    host: str
    port: int
    transport: TransportName
    priority: int = 0
    weight: int = 0


def locate(
    target: Target,
    answers: Answers,
    pick: Pick,
    supported: Sequence[TransportName] = ("udp", "tcp"),
) -> list[Located] | Need:
    """The destinations of ``target`` in the order to try them, or the queries still
    needed. Raises DnsError when DNS says there is none."""
    if is_ip(target.host):
        port = target.port or target.default_port
        return [Located(Destination(target.default_transport, target.host, port))]
    if target.port is not None:
        servers = [_Server(target.host, target.port, target.default_transport)]
    else:
        found = _servers(target, answers, pick, supported)
        if isinstance(found, Need):
            return found
        servers = found
    return _addresses(target, servers, answers)


def _servers(
    target: Target, answers: Answers, pick: Pick, supported: Sequence[TransportName]
) -> list[_Server] | Need:
    if target.transport is not None:
        names = [(_srv_name(target.transport, target.host), target.transport)]
    else:
        naptr = answers(Query(target.host, "NAPTR"))
        if naptr is None:
            return Need((Query(target.host, "NAPTR"),))
        if not naptr.exists:  # NXDOMAIN: no SRV or address records under it either
            raise DnsError(f"{target.host} does not exist in DNS", 404)
        names = _from_naptr(naptr, target.secure, supported) or _srv_names(target, supported)
    queries = [(Query(name, "SRV"), transport) for name, transport in names]
    found = [(answers(query), transport) for query, transport in queries]
    missing = tuple(
        query for (query, _), (srv, _) in zip(queries, found, strict=True) if srv is None
    )
    if missing:
        return Need(missing)
    servers: list[_Server] = []
    refused = False
    for answer, transport in found:
        assert answer is not None
        records = [r for r in answer.records if isinstance(r, Srv)]
        refused = refused or any(not r.target for r in records)
        for record in srv_order(records, pick):
            if record.target:
                servers.append(
                    _Server(record.target, record.port, transport, record.priority, record.weight)
                )
    if servers:
        return servers
    if refused:  # RFC 2782: a target of "." says the service is not offered at this domain
        raise DnsError(f"{target.host} offers no SIP service (SRV target '.')", 404)
    return [_Server(target.host, target.default_port, target.default_transport)]


def _srv_name(transport: TransportName, host: str) -> str:
    return f"{SRV_PREFIX[transport]}.{host}"


def _srv_names(
    target: Target, supported: Sequence[TransportName]
) -> list[tuple[str, TransportName]]:
    """§4.1 without NAPTR: an SRV lookup for each transport we support."""
    usable = [t for t in supported if t in SRV_PREFIX and (t == "tls") == target.secure]
    return [(_srv_name(t, target.host), t) for t in usable]


def _from_naptr(
    answer: Answer, secure: bool, supported: Sequence[TransportName]
) -> list[tuple[str, TransportName]]:
    """The SRV names of the usable NAPTR records, in order then preference (§4.1). Only
    "s" records (the replacement is an SRV name); sips takes only SIPS+D2T."""
    records = sorted(
        (r for r in answer.records if isinstance(r, Naptr)),
        key=lambda r: (r.order, r.preference),
    )
    names: list[tuple[str, TransportName]] = []
    for record in records:
        transport = NAPTR_SERVICES.get(record.service)
        if transport is None or transport not in supported or record.flags != "s":
            continue
        if secure and transport != "tls":
            continue
        name = (domain(record.replacement), transport)
        if name[0] and name not in names:
            names.append(name)
    return names


def srv_order(records: Iterable[Srv], pick: Pick) -> list[Srv]:
    """RFC 2782: priority ascending; within a priority, each next record drawn with a
    chance proportional to its weight (weight 0 ones first in line, with a small one)."""
    ordered: list[Srv] = []
    by_priority: dict[int, list[Srv]] = {}
    for record in records:
        by_priority.setdefault(record.priority, []).append(record)
    for priority in sorted(by_priority):
        group = sorted(by_priority[priority], key=lambda r: r.weight != 0)
        while group:
            drawn = pick(sum(r.weight for r in group))
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= drawn:
                    ordered.append(group.pop(index))
                    break
    return ordered


def _addresses(target: Target, servers: list[_Server], answers: Answers) -> list[Located] | Need:
    """Each server's A then AAAA addresses (IPv4 first, as most SIP networks still are),
    in the servers' order, each destination once."""
    needed: list[Query] = []
    located: dict[Destination, Located] = {}  # in insertion order
    for server in servers:
        if is_ip(server.host):
            found: list[str] = [server.host]
        else:
            found = []
            for query in (Query(server.host, "A"), Query(server.host, "AAAA")):
                answer = answers(query)
                if answer is None:
                    if query not in needed:
                        needed.append(query)
                else:
                    found.extend(r for r in answer.records if isinstance(r, str))
        for address in found:
            destination = Destination(server.transport, address, server.port)
            located.setdefault(destination, Located(destination, server.priority, server.weight))
    if needed:
        return Need(tuple(needed))
    if not located:
        raise DnsError(_nothing_for(target.host, answers), 404)
    return list(located.values())


def _nothing_for(host: str, answers: Answers) -> str:
    asked = (answers(Query(host, "NAPTR")), answers(Query(host, "A")))
    if any(answer is not None and not answer.exists for answer in asked):
        return f"{host} does not exist in DNS"
    return f"no address in DNS for {host}"
