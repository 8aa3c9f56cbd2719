"""The asyncio shell of RFC 3263: asks dnspython's asynchronous resolver for what the
sans-IO procedure (``rfc3263.locate``) still needs, and keeps the answers for their TTL.

It reads the system's resolver configuration (``/etc/resolv.conf``) like any program, when
first needed and again when the file changes, and takes a name listed in ``/etc/hosts``
from there (``hosts``). Lookups never block the event loop; at most ``max_concurrent`` are
under way at once, each bounded by ``timeout``, and one query asked by several calls at
the same time goes to the server once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Sequence

import dns.asyncresolver
import dns.exception
import dns.message
import dns.rdatatype
import dns.resolver

from sipfleet.dns.hosts import RECHECK_S, HostsFile
from sipfleet.dns.records import (
    NEGATIVE_TTL_S,
    Answer,
    Naptr,
    Query,
    Record,
    RecordCache,
    Srv,
    domain,
)
from sipfleet.dns.rfc3263 import DnsError, Located, Need, Target, locate
from sipfleet.sip.uri import SipUri
from sipfleet.transport.base import Destination, TransportName

log = logging.getLogger(__name__)
MAX_ROUNDS = 4  # NAPTR, SRV, addresses: three; one more for an answer that expired meanwhile


class DnsResolver:
    def __init__(
        self,
        max_concurrent: int = 32,
        timeout: float = 2.0,
        cache_size: int = 10_000,
        supported: Sequence[TransportName] = ("udp", "tcp"),
        clock: Callable[[], float] = time.monotonic,
        pick: Callable[[int], int] | None = None,
        resolv_conf: str = "/etc/resolv.conf",
        hosts: HostsFile | None = None,
    ) -> None:
        self.cache = RecordCache(cache_size)
        self.supported = tuple(supported)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._timeout = timeout
        self._clock = clock
        self._pick = pick or _uniform
        self._asking: dict[Query, asyncio.Future[Answer]] = {}
        self._dns: dns.asyncresolver.Resolver | None = None
        self._resolv_conf = resolv_conf
        self._conf_checked_at = 0.0
        self._conf_stamp: int | None = None
        self.hosts = hosts or HostsFile()
        self.queries = 0  # sent to the DNS server (the cache answered the rest)

    async def destinations(self, uri: SipUri) -> list[Destination]:
        """Where to send a request for ``uri``, in the order to try. Raises DnsError."""
        return [each.destination for each in await self.locate(uri)]

    async def locate(self, uri: SipUri) -> list[Located]:
        target = Target.of(uri, self.supported)
        pinned = self.hosts.addresses(target.host)
        if pinned:  # /etc/hosts first, as the C library does: no NAPTR, no SRV
            port = target.port or target.default_port
            return [Located(Destination(target.default_transport, a, port)) for a in pinned]
        fetched: dict[Query, Answer] = {}  # this call's answers, even those with TTL 0
        for _ in range(MAX_ROUNDS):
            answers = functools.partial(self._known, fetched, self._clock())
            result = locate(target, answers, self._pick, self.supported)
            if not isinstance(result, Need):
                return result
            got = await asyncio.gather(*(self._answer(q) for q in result.queries))
            fetched.update(zip(result.queries, got, strict=True))
        raise DnsError(f"{target.host}: DNS lookup did not settle")

    def _known(self, fetched: dict[Query, Answer], now: float, query: Query) -> Answer | None:
        """This call's answer to ``query``: asked for it, else from the cache (then kept
        for the rest of the call, which reads most records more than once)."""
        answer = fetched.get(query)
        if answer is None:
            answer = self.cache.get(query, now)
            if answer is not None:
                fetched[query] = answer
        return answer

    async def _answer(self, query: Query) -> Answer:
        """Ask once for ``query`` however many calls want it at the same time."""
        pending = self._asking.get(query)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._asking[query] = future
        try:
            answer = await self._ask(query)
        except BaseException as exc:  # the callers waiting on it fail the same way
            if isinstance(exc, DnsError):
                future.set_exception(exc)
                future.exception()  # marked as retrieved: perhaps nobody else waits
            else:
                future.cancel()
            raise
        finally:
            del self._asking[query]
        future.set_result(answer)
        self.cache.put(query, answer, self._clock())
        return answer

    async def _ask(self, query: Query) -> Answer:
        resolver = self._configured()
        async with self._slots:
            self.queries += 1
            try:
                reply = await resolver.resolve(
                    query.name + ".", query.type, raise_on_no_answer=False, lifetime=self._timeout
                )
            except dns.resolver.NXDOMAIN as exc:
                return Answer((), _nxdomain_ttl(exc), exists=False)
            except dns.exception.Timeout:
                raise DnsError(f"DNS lookup of {query} timed out") from None
            except dns.exception.DNSException as exc:
                raise DnsError(f"DNS lookup of {query} failed: {exc}") from None
        if reply.rrset is None:
            return Answer((), _negative_ttl(reply.response))
        records = tuple(_record(rdata) for rdata in reply.rrset)
        return Answer(records, float(reply.chaining_result.minimum_ttl))  # CNAMEs' TTLs too

    def _configured(self) -> dns.asyncresolver.Resolver:
        """dnspython's resolver as resolv.conf says, read again when the file changes
        (checked at most every ``RECHECK_S``), as the C library does."""
        now = self._clock()
        if self._dns is not None and now - self._conf_checked_at < RECHECK_S:
            return self._dns
        self._conf_checked_at = now
        try:
            stamp = os.stat(self._resolv_conf).st_mtime_ns
        except OSError:
            stamp = None
        if self._dns is not None and stamp == self._conf_stamp:
            return self._dns
        try:
            resolver = dns.asyncresolver.Resolver(self._resolv_conf)
        except (OSError, dns.exception.DNSException) as exc:  # no file, no nameserver in it
            raise DnsError(f"no DNS resolver configured: {exc}") from None
        resolver.cache = None  # ours keeps the answers (dnspython's is off by default)
        self._dns, self._conf_stamp = resolver, stamp
        return resolver


def _uniform(total: int) -> int:
    """A uniform integer in 0..total (``random.randint``, at a third of its cost)."""
    return int(random.random() * (total + 1))


def _record(rdata: object) -> Record:
    kind = rdata.rdtype  # type: ignore[attr-defined]
    if kind == dns.rdatatype.NAPTR:
        return Naptr(
            rdata.order,  # type: ignore[attr-defined]
            rdata.preference,  # type: ignore[attr-defined]
            rdata.flags.decode("ascii", "replace").lower(),  # type: ignore[attr-defined]
            rdata.service.decode("ascii", "replace").upper(),  # type: ignore[attr-defined]
            domain(rdata.replacement.to_text()),  # type: ignore[attr-defined]
        )
    if kind == dns.rdatatype.SRV:
        target = domain(rdata.target.to_text())  # type: ignore[attr-defined]
        return Srv(rdata.priority, rdata.weight, rdata.port, target)  # type: ignore[attr-defined]
    return str(rdata.address)  # type: ignore[attr-defined]


def _nxdomain_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    names = exc.qnames()  # type: ignore[no-untyped-call]
    return _negative_ttl(exc.response(names[0]) if names else None)  # type: ignore[no-untyped-call]


def _negative_ttl(message: dns.message.Message | None) -> float:
    """RFC 2308 §5: the SOA's TTL, at most its minimum field; a default without one."""
    for rrset in message.authority if message is not None else ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_TTL_S
