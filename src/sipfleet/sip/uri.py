"""URIs: sip, sips and tel (RFC 3261 §19.1, RFC 3966), with §19.1.4 comparison.

A parsed URI keeps its original text; ``str(uri)`` returns it unchanged until a copy is
made with ``replace``, which renders the new one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Final

from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import Params, format_params, parse_params, parse_port, unescape
from sipfleet.sip.memo import Memo

# Checked with regexes, not character by character: every message carries several URIs.
_HOST: Final = re.compile(r"[A-Za-z0-9._-]+")
_USER_FORBIDDEN: Final = re.compile(r'[ \t\r\n<>"@\[\]{}|\\^`]')
_TEL_CHARS: Final = frozenset("0123456789ABCDEFabcdef*#+-.()pw")
# §19.1.4: these parameters must match whenever either URI carries them (a URI without
# ";transport=udp" is not one with it: the two may resolve differently).
_PARAMS_ALWAYS_COMPARED: Final = ("transport", "user", "ttl", "method", "maddr")
SUPPORTED_SCHEMES: Final = ("sip", "sips", "tel")
_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986 §3.1, already lower case


@dataclass(slots=True, eq=False)
class SipUri:
    scheme: str  # "sip" or "sips", lower case
    user: str | None
    password: str | None
    host: str  # IPv6 references keep their brackets
    port: int | None
    params: Params = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw: str = ""

    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None,
        params: Params | None = None,
        headers: dict[str, str] | None = None,
        raw: str = "",
    ) -> None:
        """The dataclass's own ``__init__``, written out: the one it generates runs as
        interpreted code in the compiled build, and every Request-URI, Route and Contact
        read makes a URI."""
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        self.headers = headers if headers is not None else {}
        self.raw = raw

    def __str__(self) -> str:
        if not self.raw:
            self.raw = self.render()
        return self.raw

    def render(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        port = f":{self.port}" if self.port is not None else ""
        text = f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}"
        if self.headers:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.headers.items())
        return text

    def replace(self, **changes: Any) -> SipUri:
        """A copy with some fields changed (its text is rendered anew)."""
        values: dict[str, Any] = {
            "scheme": self.scheme,
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "params": dict(self.params),
            "headers": dict(self.headers),
        }
        values.update(changes)
        return SipUri(**values, raw="")

    @property
    def host_bare(self) -> str:
        """The host without IPv6 brackets, lower case: what a resolver or socket takes."""
        host = self.host
        if host.startswith("["):
            host = host[1:-1]
        return host.lower()

    @property
    def transport(self) -> str:
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def is_loose_router(self) -> bool:
        return "lr" in self.params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        return uri_equal(self, other)

    def __hash__(self) -> int:  # over what uri_equal always compares, normalised alike
        return hash((self.scheme, unescape(self.user or ""), _host_key(self.host_bare), self.port))


@dataclass(slots=True, eq=False)
class TelUri:
    number: str  # as written, visual separators included
    params: Params = field(default_factory=dict)
    raw: str = ""

    scheme = "tel"

    def __str__(self) -> str:
        if not self.raw:
            self.raw = "tel:" + self.number + format_params(self.params)
        return self.raw

    @property
    def digits(self) -> str:
        """The number without visual separators (RFC 3966 §5.1.1)."""
        return "".join(ch for ch in self.number if ch not in "-.()")

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TelUri):
            return NotImplemented
        return self.digits.lower() == other.digits.lower() and _lower_params(
            self.params
        ) == _lower_params(other.params)

    def __hash__(self) -> int:
        return hash(self.digits.lower())


@dataclass(slots=True, eq=False)
class AbsoluteUri:
    """Any other scheme (http:, urn:, mailto: ...): kept as text, compared exactly."""

    scheme: str
    raw: str

    def __str__(self) -> str:
        return self.raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsoluteUri):
            return NotImplemented
        return self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)


Uri = SipUri | TelUri | AbsoluteUri


def _lower_params(params: Params) -> Params:
    return {k: (v.lower() if v is not None else None) for k, v in params.items()}


def parse_uri(text: str, allow_other_schemes: bool = True) -> Uri:
    """Parse a URI. Unknown schemes give an AbsoluteUri, or 416 when not allowed."""
    colon = text.find(":")
    if colon <= 0:
        raise ParseError("Bad URI: no scheme")
    scheme = text[:colon].lower()
    if scheme == "sip" or scheme == "sips":
        return parse_sip_uri(text, scheme, colon + 1)
    if scheme == "tel":
        return parse_tel_uri(text, colon + 1)
    if _SCHEME.fullmatch(scheme) is None:  # "<sip" is a broken URI (400), not a scheme (416)
        raise ParseError("Bad URI: bad scheme")
    if not allow_other_schemes:
        raise ParseError(f"Unsupported URI scheme {scheme!r}", 416)
    if any(ch in text for ch in " \t\r\n<>"):
        raise ParseError("Bad URI: illegal character")
    return AbsoluteUri(scheme, text)


def parse_sip_uri(text: str, scheme: str, start: int) -> SipUri:
    rest = text[start:]
    if not rest:
        raise ParseError("Bad SIP URI: empty")
    user: str | None = None
    password: str | None = None
    # No '@' may appear unescaped after the host (not in params, not in headers), so the
    # first one ends the userinfo, even when the user part holds '?' or ';' (RFC 4475
    # §3.1.1.2, §3.1.1.9).
    at = rest.find("@")
    if at != -1:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        if not userinfo or _USER_FORBIDDEN.search(userinfo):
            raise ParseError("Bad SIP URI: bad user part")
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not user:
            raise ParseError("Bad SIP URI: empty user")
    headers: dict[str, str] = {}
    question = rest.find("?")
    if question != -1:
        headers = _parse_uri_headers(rest[question + 1 :])
        rest = rest[:question]
    hostport, semi, param_text = rest.partition(";")
    host, port = split_hostport(hostport, "SIP URI")
    params = parse_params(param_text, "SIP URI") if semi else {}
    return SipUri(scheme, user, password, host, port, params, headers, text)


# "host:port" text -> (host, port), for those that passed: a few peers and our own
# addresses make most URIs, and a dict hit costs a fraction of the host's regex and the
# port's checks. Bounded (sip/memo.py): the text comes from packets.
MAX_HOSTPORTS: Final = 4096
_HOSTPORTS: Final = Memo[str, tuple[str, int | None]](MAX_HOSTPORTS)


def split_hostport(hostport: str, what: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` / ``[v6]:port`` and validate the host."""
    known = _HOSTPORTS.table.get(hostport)
    if known is None:
        known = _HOSTPORTS.put(hostport, _split_hostport(hostport, what))
    return known


def _split_hostport(hostport: str, what: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        close = hostport.find("]")
        if close == -1:
            raise ParseError(f"Bad IPv6 reference in {what}")
        host = hostport[: close + 1]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ParseError(f"Bad IPv6 address in {what}") from None
        after = hostport[close + 1 :]
        if not after:
            return host, None
        if after[0] != ":":
            raise ParseError(f"Bad host in {what}")
        return host, parse_port(after[1:], what)
    host, colon, port_text = hostport.partition(":")
    if _HOST.fullmatch(host) is None:
        raise ParseError(f"Bad host in {what}")
    if host[0] in "-." or host[-1] == "-":
        raise ParseError(f"Bad host in {what}")
    return host, (parse_port(port_text, what) if colon else None)


def _parse_uri_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in text.split("&"):
        name, _, value = item.partition("=")
        if not name:
            raise ParseError("Bad SIP URI: empty header name")
        headers[name] = value
    return headers


def parse_tel_uri(text: str, start: int) -> TelUri:
    body = text[start:]
    number, semi, param_text = body.partition(";")
    if not number or not all(ch in _TEL_CHARS for ch in number):
        raise ParseError("Bad tel URI number")
    params = parse_params(param_text, "tel URI") if semi else {}
    return TelUri(number, params, text)


def uri_equal(a: SipUri, b: SipUri) -> bool:
    """RFC 3261 §19.1.4 equality of two sip/sips URIs."""
    if a.scheme != b.scheme:
        return False
    if (a.user is None) != (b.user is None) or (a.password is None) != (b.password is None):
        return False
    if a.user is not None and unescape(a.user) != unescape(b.user or ""):
        return False
    if a.password is not None and unescape(a.password) != unescape(b.password or ""):
        return False
    if a.port != b.port or not _same_host(a.host_bare, b.host_bare):
        return False
    a_params = _comparable_params(a.params)
    b_params = _comparable_params(b.params)
    for name in _PARAMS_ALWAYS_COMPARED:
        if (name in a_params) != (name in b_params):
            return False
    for name, value in a_params.items():
        if name in b_params:
            other = b_params[name]
            if (value is None) != (other is None):
                return False
            if (
                value is not None
                and other is not None
                and (unescape(value).lower() != unescape(other).lower())
            ):
                return False
    a_headers = {k.lower(): unescape(v) for k, v in a.headers.items()}
    b_headers = {k.lower(): unescape(v) for k, v in b.headers.items()}
    return a_headers == b_headers


def _comparable_params(params: Params) -> Params:
    """Parameter names with %HH escapes resolved (";%6C%72" is ";lr"), lower case."""
    if not any("%" in name for name in params):
        return params
    return {unescape(name).lower(): value for name, value in params.items()}


def _host_key(host: str) -> str:
    """One spelling per IPv6 address, so equal URIs hash alike."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        return host


def _same_host(a: str, b: str) -> bool:
    """Host names compare case-insensitively; IPv6 references by address ([::1] is [0::1])."""
    if a == b:
        return True
    if ":" in a and ":" in b:
        try:
            return ipaddress.IPv6Address(a) == ipaddress.IPv6Address(b)
        except ValueError:
            return False
    return False
