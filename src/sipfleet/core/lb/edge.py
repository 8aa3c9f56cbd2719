"""The LB's abuse protection for each request and each answer from the cluster, on the
tables of ``core/lb/guard.py`` (docs/lb.md, "Abuse protection").

For a request from outside, in this order:

1. **Rate**: over its source's bucket, a request is blocked unless the source is exempt
   (``[edge] exempt``, ``[proxy] trusted_peers``, the cluster's own nodes), which is
   looked at only then: the common case costs one dictionary lookup and some arithmetic.
   Blocked over UDP: dropped. A 503 would go to an address anyone can forge (a
   reflection) and be a packet for each of the flood's; a flooder retransmits anyway.
   Over a connection (its address proven by the handshake, and nothing is retransmitted
   there: silence would leave a client waiting for Timer F): 503 with Retry-After.
2. **Scanner** (``[edge] scanner_filter``): a User-Agent of a known scanner: dropped.
3. **Lockout**: a request with credentials of a (user, source) that is locked goes on
   without them (the cluster challenges it afresh, as after a wrong password); one that
   is not locked gets a mark in our Via, ``;lba=``, so its answer, which carries our Via
   back, tells the LB how the guess went without the LB remembering the request.

Answers with the mark, from a node of the cluster (a phone could add one to frame
someone): 401/407 without ``stale=true`` is a wrong answer for that pair, 2xx a right one.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Final

from sipfleet.config.edge import EdgeSection
from sipfleet.core.lb.guard import AuthLockouts, Reports, ScannerFilter, SourceLimits, lockout_key
from sipfleet.core.lb.router import Router
from sipfleet.sip import ParseError, Request, Response
from sipfleet.sip.digest import parse_auth_header
from sipfleet.sip.memo import Memo
from sipfleet.sip.message import header_value
from sipfleet.transport.base import Peer

log = logging.getLogger(__name__)
DROP: Final = "drop"  # check(): blocked, send nothing
REFUSE: Final = "refuse"  # check(): blocked, answer 503 with Retry-After
AUTH_MARK: Final = ";lba="
CREDENTIALS: Final = ("authorization", "proxy-authorization")
CHALLENGES: Final = ("www-authenticate", "proxy-authenticate")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._@+/-]")  # what may reach a log line from a packet


def printable(text: str, limit: int = 40) -> str:
    """Packet text made safe for a line fail2ban reads: nothing that could pass for
    ``source=<address>`` or end the line."""
    return _UNSAFE.sub("?", text[:limit])


class EdgeGuard:
    def __init__(self, settings: EdgeSection, router: Router, exempt: Iterable[str]) -> None:
        self.router = router
        self.limits: SourceLimits | None = None
        if settings.rate_per_s > 0:
            self.limits = SourceLimits(settings.rate_per_s, settings.burst, settings.max_sources)
        self.lockouts: AuthLockouts | None = None
        if settings.lockout_failures > 0:
            self.lockouts = AuthLockouts(
                settings.lockout_failures,
                settings.lockout_s,
                settings.lockout_max_s,
                settings.max_lockouts,
            )
        self.scanners: ScannerFilter | None = None
        if settings.scanner_filter and settings.scanner_agents:
            self.scanners = ScannerFilter(tuple(settings.scanner_agents))
        self.reports = Reports(settings.report_interval_s, settings.max_sources)
        self.rate_text: Final = f"{settings.rate_per_s:g}/s"
        self.networks = [ipaddress.ip_network(a.strip("[]"), strict=False) for a in exempt]
        self.gateways: frozenset[str] = frozenset()  # the LCR's gateways (lcr_gw), by address
        self.exempt_hosts = Memo[str, bool](4096)
        # counters
        self.rate_dropped = 0
        self.rate_refused = 0
        self.scanners_dropped = 0
        self.locked_requests = 0  # requests of a locked pair sent on without credentials
        self.lockouts_started = 0
        self.auth_failures = 0  # wrong answers seen in answers from the cluster

    # -- requests --------------------------------------------------------------------------
    def check(self, request: Request, peer: Peer, now: float) -> str:
        """DROP, REFUSE, or the text to add to our Via ("" or the lockout mark)."""
        limits = self.limits
        if limits is not None and not limits.admit(peer.host, now) and not self.exempt(peer):
            return self._over_rate(peer, now)
        scanners = self.scanners
        lockouts = self.lockouts
        if scanners is None and lockouts is None:
            return ""
        # One pass over the header names, compared as strings: a header() lookup and two
        # `in` scans of the list cost ~4.5k instructions a request (half the LB's growth).
        keys = request.keys
        agent_line = ""
        credentials = False
        for index in range(len(keys)):
            key = keys[index]
            if key == "user-agent":
                if not agent_line:
                    agent_line = request.lines[index]
            elif key == "authorization" or key == "proxy-authorization":
                credentials = True
        if self._scanner(agent_line, peer, now):
            return DROP
        if lockouts is not None and credentials:
            return self._credentials(request, peer, now)
        return ""

    def screen(self, agent_line: str, peer: Peer, now: float) -> str:
        """``check`` for a request without credentials whose first User-Agent line is
        ``agent_line`` ("": none), read by the caller (the LB's fast path)."""
        limits = self.limits
        if limits is not None and not limits.admit(peer.host, now) and not self.exempt(peer):
            return self._over_rate(peer, now)
        return DROP if self._scanner(agent_line, peer, now) else ""

    def _scanner(self, agent_line: str, peer: Peer, now: float) -> bool:
        """A scanner's User-Agent (``agent_line``, the whole line: the memo's key, as a
        phone sends the same one each time) from a source not exempt: counted, reported."""
        scanners = self.scanners
        scanner = scanners is not None and agent_line and scanners.is_scanner(agent_line)
        if scanner and not self.exempt(peer):
            self.scanners_dropped += 1
            agent = printable(header_value(agent_line))
            self._report(peer.host, "scanner", now, f"user_agent={agent}")
            return True
        return False

    def exempt(self, peer: Peer) -> bool:
        host = peer.host
        known = self.exempt_hosts.table.get(host)
        if known is None:
            known = self.exempt_hosts.put(host, self._in_networks(host))
        return known or self.router.from_cluster(peer)

    def exempt_gateways(self, hosts: Iterable[str]) -> None:
        """The LCR's gateways as they are now (their addresses; names are not looked up):
        a carrier sending many calls from one address is no flood."""
        gateways = frozenset(_address(host) for host in hosts)
        if gateways != self.gateways:
            self.gateways = gateways
            self.exempt_hosts = Memo[str, bool](4096)  # what was known is known again

    def _in_networks(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return str(address) in self.gateways or any(address in network for network in self.networks)

    def _over_rate(self, peer: Peer, now: float) -> str:
        if peer.transport == "udp":
            self.rate_dropped += 1
            verdict = DROP
        else:
            self.rate_refused += 1
            verdict = REFUSE
        self._report(peer.host, "rate", now, f"over={self.rate_text}")
        return verdict

    def _credentials(self, request: Request, peer: Peer, now: float) -> str:
        values = [value for name in CREDENTIALS for value in request.header_lines(name)]
        key = self.credentials_key(values, peer)
        if key is None:
            return ""
        assert self.lockouts is not None
        if self.lockouts.locked(key, now):
            self.locked_requests += 1
            for name in CREDENTIALS:
                request.remove_header(name)
            username = key.rpartition("\x00")[0]  # (cut to MAX_USER: longer than printed)
            self._report(peer.host, "auth-locked", now, f"user={printable(username)}")
            return ""
        return auth_mark(key)

    def credentials_key(self, values: list[str], peer: Peer) -> str | None:
        """The lockout key of a request from ``peer`` whose credentials are ``values``
        (each Authorization header's value, then each Proxy-Authorization's): None when
        none names a digest username, or the source is exempt. What ``check`` reads;
        the LB's fast path asks it too, then whether the key is locked."""
        username = _username(values)
        if username is None or self.exempt(peer):
            return None
        return lockout_key(username, peer.host)

    def _report(self, source: str, reason: str, now: float, detail: str) -> None:
        count = self.reports.blocked(f"{reason}\x00{source}", now)
        if count:
            log.warning("blocked: source=%s reason=%s count=%d %s", source, reason, count, detail)

    # -- answers ---------------------------------------------------------------------------
    def answered(self, response: Response, top: str, peer: Peer, now: float) -> None:
        """An answer whose top Via (ours) carries the lockout mark."""
        if self.lockouts is None or not self.router.from_cluster(peer):
            return
        key = _marked_key(top)
        if key is None:
            return
        status = response.status
        if 200 <= status < 300:
            self.lockouts.succeeded(key)
        elif (status == 401 or status == 407) and not _stale(response):
            self.auth_failures += 1
            seconds = self.lockouts.failed(key, now)
            if seconds:
                self.lockouts_started += 1
                username, _, source = key.partition("\x00")
                log.warning(
                    "blocked: source=%s reason=auth-lockout user=%s seconds=%g",
                    source,
                    printable(username),
                    seconds,
                )

    def dropped(self) -> int:
        """Requests stopped here so far, each for a fraction of relaying it."""
        return self.rate_dropped + self.rate_refused + self.scanners_dropped

    def counters(self) -> dict[str, int]:
        return {
            "edge_rate_dropped": self.rate_dropped,
            "edge_rate_refused": self.rate_refused,
            "edge_scanners_dropped": self.scanners_dropped,
            "edge_locked_requests": self.locked_requests,
            "edge_lockouts": self.lockouts_started,
            "edge_auth_failures": self.auth_failures,
        }


def auth_mark(key: str) -> str:
    """The mark our Via carries for a request with credentials of lockout key ``key``."""
    return AUTH_MARK + base64.urlsafe_b64encode(key.encode()).decode("ascii").rstrip("=")


def _username(values: list[str]) -> str | None:
    """The first digest username among the credentials ``values``."""
    for value in values:
        try:
            credentials = parse_auth_header(value)
        except ParseError:
            continue
        if credentials.is_digest and credentials.username:
            return credentials.username
    return None


def _marked_key(top: str) -> str | None:
    start = top.find(AUTH_MARK)
    if start < 0:
        return None
    value = top[start + len(AUTH_MARK) :]
    for end in (";", ",", " "):
        value = value.split(end, 1)[0]
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _stale(response: Response) -> bool:
    """A challenge that only says the nonce expired: the password was right."""
    for name in CHALLENGES:
        for line in response.header_lines(name):
            if "stale=true" in line.lower().replace(" ", "").replace('"', ""):
                return True
    return False


def _address(host: str) -> str:
    bare = host.strip("[]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare.lower()  # a name: never equal to a source address
