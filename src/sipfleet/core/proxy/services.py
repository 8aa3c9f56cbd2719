"""What a routing policy can ask of the proxy (``CallServices``): domains, trusted peers,
caller authentication with the cluster's nonce scheme, user preferences."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from sipfleet.core.authenticate import Challenge, authenticate
from sipfleet.routing.api import Authenticated, CallContext, Reply
from sipfleet.sip.auth import DigestAuthority
from sipfleet.sip.message import Request
from sipfleet.storage.interface import Storage
from sipfleet.transport.sockets import normalise_host

PROXY_CREDENTIALS = "proxy-authorization"


class ProxyServices:
    def __init__(
        self,
        storage: Storage,
        authority: DigestAuthority,
        *,
        domains: Iterable[str],
        trusted_peers: Iterable[str] = (),
        realm: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.authority = authority
        self.domains = frozenset(d.lower() for d in domains)
        self.trusted_peers = frozenset(_address(p) for p in trusted_peers)
        self.realm = realm
        self.clock = clock

    def is_local_domain(self, host: str) -> bool:
        """``[sip] domains``; empty: every domain, as for the registrar."""
        return not self.domains or normalise_host(host).lower() in self.domains

    def is_trusted_peer(self, host: str) -> bool:
        return bool(self.trusted_peers) and _address(host) in self.trusted_peers

    async def preferences(self, username: str, domain: str) -> dict[str, str]:
        return await self.storage.preferences.get(username, domain)

    async def authenticate(self, call: CallContext) -> Authenticated | Reply:
        """RFC 3261 §22.3: 407 without credentials for our realm, with wrong ones
        (a fresh challenge: the user may retype the password) or a stale nonce."""
        request = call.request
        caller = call.caller_uri
        realm = self.realm or (caller.host_bare if caller else "")
        outcome = await authenticate(
            self.authority, self.storage.subscribers, request, realm, self.clock(), "proxy"
        )
        if isinstance(outcome, Challenge):
            return Reply(outcome.status, outcome.reason, outcome.headers)
        _consume_credentials(request, realm)
        return Authenticated(outcome.username, realm)


def _consume_credentials(request: Request, realm: str) -> None:
    """Credentials for our realm end here; those for other realms go on (§22.3)."""
    lines = request.header_lines(PROXY_CREDENTIALS)
    if len(lines) == 1:
        request.remove_header(PROXY_CREDENTIALS)
        return
    kept = [
        line
        for line, parsed in zip(lines, request.auth_headers(PROXY_CREDENTIALS), strict=True)
        if not (parsed.is_digest and parsed.realm == realm)
    ]
    request.remove_header(PROXY_CREDENTIALS)
    for line in kept:
        request.add_header("Proxy-Authorization", line)


def _address(host: str) -> str:
    bare = normalise_host(host)
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare.lower()
