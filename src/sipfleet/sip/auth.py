"""Digest authentication for registrars and proxies, without shared state.

Nonces are self-verifying: ``issued-at + random + HMAC(cluster secret, …, realm, Call-ID)``.
Any node of the cluster can check one; none has to remember it. Binding the nonce to the
Call-ID does two things: a nonce cannot be carried over to another dialog, and because the
LB hashes on Call-ID, every request that may reuse a nonce reaches the same node, whose
nonce-count table then rejects replays. Time is passed in, never read.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from sipfleet.sip.digest import AuthHeader, compute_response, format_challenge
from sipfleet.sip.message import Request

# RFC 8760 §2.4: offer the stronger algorithm first.
DEFAULT_ALGORITHMS = ("SHA-256", "MD5")
_TIME_DIGITS = 8  # hex digits of the issue time
_RANDOM_DIGITS = 16
_MAC_DIGITS = 32


class Verdict(Enum):
    OK = "ok"
    STALE = "stale"  # the digest was right but the nonce has expired: challenge with stale=true
    REJECTED = "rejected"  # wrong password, unknown user, forged nonce, replay: challenge again


@dataclass(frozen=True, slots=True)
class AuthResult:
    verdict: Verdict
    username: str | None = None
    why: str = ""  # for the log, never for the wire (it would help a scanner)


class DigestAuthority:
    def __init__(
        self,
        secret: bytes,
        nonce_lifetime: float = 300.0,
        algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
        max_tracked_nonces: int = 200_000,
    ) -> None:
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        self._secret = secret
        self.nonce_lifetime = nonce_lifetime
        self.algorithms = algorithms
        self._max_tracked = max_tracked_nonces
        self._last_nc: OrderedDict[str, tuple[int, float]] = OrderedDict()

    # -- challenges ------------------------------------------------------------------------
    def make_nonce(self, realm: str, call_id: str, now: float) -> str:
        stamp = f"{int(now) & 0xFFFFFFFF:0{_TIME_DIGITS}x}"
        payload = stamp + secrets.token_hex(_RANDOM_DIGITS // 2)
        return payload + self._mac(payload, realm, call_id)

    def challenges(self, realm: str, call_id: str, now: float, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values: one per algorithm, one nonce."""
        nonce = self.make_nonce(realm, call_id, now)
        return [format_challenge(realm, nonce, algorithm, stale) for algorithm in self.algorithms]

    def _mac(self, payload: str, realm: str, call_id: str) -> str:
        message = f"{payload}\x00{realm}\x00{call_id}".encode("latin-1", "replace")
        return hmac.digest(self._secret, message, "sha256").hex()[:_MAC_DIGITS]

    # -- verification ------------------------------------------------------------------------
    @staticmethod
    def credentials_for(
        request: Request, realm: str, header: str = "authorization"
    ) -> AuthHeader | None:
        """The Digest credentials addressed to ``realm`` (others are for other hops)."""
        for credentials in request.auth_headers(header):
            if credentials.is_digest and credentials.realm == realm:
                return credentials
        return None

    def verify(
        self,
        request: Request,
        credentials: AuthHeader,
        ha1_by_algorithm: dict[str, str] | None,
        now: float,
    ) -> AuthResult:
        """Check credentials against the subscriber's HA1 values (None: unknown user).

        An unknown user and a wrong password give the same verdict.
        """
        username = credentials.username
        problem = self._malformed(request, credentials)
        if problem:
            return AuthResult(Verdict.REJECTED, username, problem)
        algorithm = credentials.algorithm
        ha1 = (ha1_by_algorithm or {}).get(algorithm)
        if ha1 is None:
            return AuthResult(Verdict.REJECTED, username, "unknown user or no HA1 for algorithm")
        nonce = credentials.nonce or ""
        realm = credentials.realm or ""
        if not self._nonce_is_ours(nonce, realm, request.call_id):
            return AuthResult(Verdict.REJECTED, username, "nonce not issued by this cluster")
        expected = compute_response(
            ha1,
            request.method,
            credentials.get("uri") or "",
            nonce,
            algorithm,
            credentials.get("qop"),
            credentials.get("nc"),
            credentials.get("cnonce"),
        )
        if not hmac.compare_digest(expected, (credentials.get("response") or "").lower()):
            return AuthResult(Verdict.REJECTED, username, "wrong response digest")
        if now - self._issued_at(nonce, now) > self.nonce_lifetime:
            return AuthResult(Verdict.STALE, username, "nonce expired")
        if not self._fresh_count(nonce, credentials.get("nc") or "", now):
            return AuthResult(Verdict.REJECTED, username, "nonce-count replayed")
        return AuthResult(Verdict.OK, username)

    def _malformed(self, request: Request, credentials: AuthHeader) -> str:
        for name in ("username", "realm", "nonce", "uri", "response"):
            if not credentials.get(name):
                return f"credentials without {name}"
        if credentials.algorithm not in self.algorithms:
            return f"algorithm {credentials.algorithm} not offered"
        if (credentials.get("qop") or "").lower() != "auth":
            return "qop=auth is required (it carries the nonce-count)"
        nc = credentials.get("nc") or ""
        if len(nc) != 8 or not all(ch in "0123456789abcdefABCDEF" for ch in nc):
            return "bad nonce-count"
        if not credentials.get("cnonce"):
            return "credentials without cnonce"
        # The digest-uri is not compared with the Request-URI: proxies rewrite R-URIs and
        # some UAs (sipp among them) put the next hop there. The response still covers the
        # uri it names, and the nonce-count table refuses any replay of the credentials.
        return ""

    def _nonce_is_ours(self, nonce: str, realm: str, call_id: str) -> bool:
        if len(nonce) != _TIME_DIGITS + _RANDOM_DIGITS + _MAC_DIGITS:
            return False
        payload, mac = nonce[:-_MAC_DIGITS], nonce[-_MAC_DIGITS:]
        return hmac.compare_digest(mac, self._mac(payload, realm, call_id))

    @staticmethod
    def _issued_at(nonce: str, now: float) -> float:
        """Issue time, unwrapped from its 32 bits against ``now``."""
        stamp = int(nonce[:_TIME_DIGITS], 16)
        base = int(now) & ~0xFFFFFFFF
        issued = base | stamp
        return float(issued - 2**32 if issued > now + 60 else issued)

    def _fresh_count(self, nonce: str, nc_text: str, now: float) -> bool:
        """The nonce-count must grow with every use of a nonce (RFC 7616 §3.4)."""
        nc = int(nc_text, 16)
        seen = self._last_nc.get(nonce)
        if seen is not None and nc <= seen[0]:
            return False
        self._last_nc[nonce] = (nc, now)
        self._last_nc.move_to_end(nonce)
        self._forget_old(now)
        return True

    def _forget_old(self, now: float) -> None:
        table = self._last_nc
        while table:
            oldest, (_, seen_at) = next(iter(table.items()))
            if len(table) <= self._max_tracked and now - seen_at <= self.nonce_lifetime:
                break
            del table[oldest]
