"""Digest authentication of a request against the subscriber table (registrar and proxy).

The nonce scheme and the arithmetic are in sipfleet.sip.auth; this adds the one database
read (the subscriber's HA1 values) and turns every outcome into either the authenticated
user name or the challenge to answer with. Unknown users and wrong passwords get the same
challenge, so a scanner learns nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from sipfleet.config import Config
from sipfleet.sip.auth import DigestAuthority, Verdict
from sipfleet.sip.message import Request
from sipfleet.storage.interface import SubscriberStore

log = logging.getLogger(__name__)

Side = Literal["registrar", "proxy"]
_HEADERS = {
    # credentials header, challenge header, status, reason
    "registrar": ("authorization", "WWW-Authenticate", 401, "Unauthorized"),
    "proxy": ("proxy-authorization", "Proxy-Authenticate", 407, "Proxy Authentication Required"),
}


# Credentials refused in this process, by verdict ("rejected": wrong password, unknown
# user, forged nonce or replay; "stale": a right digest on an expired nonce), for the
# metrics. A process serves one role, so a module-level table is the process's own.
FAILURES: dict[str, int] = {"rejected": 0, "stale": 0}


def authority_for(config: Config) -> DigestAuthority:
    """The nonce scheme every authenticating role of the cluster shares."""
    return DigestAuthority(
        config.node.cluster_secret.encode(),
        nonce_lifetime=config.sip.nonce_lifetime_s,
        algorithms=tuple(config.sip.auth_algorithms),
    )


@dataclass(frozen=True, slots=True)
class Challenge:
    """The 401/407 to answer: one challenge header per offered algorithm."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Authenticated:
    username: str
    realm: str


async def authenticate(
    authority: DigestAuthority,
    subscribers: SubscriberStore,
    request: Request,
    realm: str,
    now: float,
    side: Side,
) -> Authenticated | Challenge:
    """Check the request's credentials for ``realm`` (may raise StorageUnavailable)."""
    credentials_header, _, _, _ = _HEADERS[side]
    credentials = authority.credentials_for(request, realm, credentials_header)
    if credentials is None:
        return challenge(authority, request, realm, now, side)
    subscriber = await subscribers.get(credentials.username or "", realm)
    ha1s = {"MD5": subscriber.ha1, "SHA-256": subscriber.ha1_sha256} if subscriber else None
    result = authority.verify(request, credentials, ha1s, now)
    if result.verdict is Verdict.OK and result.username:
        return Authenticated(result.username, realm)
    if result.verdict is not Verdict.OK:
        FAILURES[result.verdict.value] += 1
    if result.verdict is Verdict.REJECTED:
        log.info("%s %s: authentication failed: %s", request.method, request.call_id, result.why)
    return challenge(authority, request, realm, now, side, stale=result.verdict is Verdict.STALE)


def challenge(
    authority: DigestAuthority,
    request: Request,
    realm: str,
    now: float,
    side: Side,
    stale: bool = False,
) -> Challenge:
    _, header, status, reason = _HEADERS[side]
    values = authority.challenges(realm, request.call_id, now, stale)
    return Challenge(status, reason, tuple((header, value) for value in values))
