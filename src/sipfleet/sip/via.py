"""The Via header (RFC 3261 §20.42, RFC 3581 rport)."""

from __future__ import annotations

import re
from typing import Final

from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import (
    PLAIN_PARAM_CHARS,
    WS,
    Params,
    format_params,
    match_plain_params,
    parse_params,
    parse_plain_params,
    parse_port,
)
from sipfleet.sip.memo import Memo
from sipfleet.sip.uri import split_hostport

# The magic cookie of RFC 3261 branches (§8.1.1.7).
BRANCH_COOKIE: Final = "z9hG4bK"
BRANCH_PARAM: Final = ";branch="  # how a Via's branch parameter is written

_TOKEN_RE = r"[A-Za-z0-9.!%*_+`'~-]+"
_SENT: Final = re.compile(
    rf"[ \t]*({_TOKEN_RE})[ \t]*/[ \t]*({_TOKEN_RE})[ \t]*/[ \t]*({_TOKEN_RE})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(?:;(.*))?",
    re.S,
)


def is_rfc3261_branch(branch: str | None) -> bool:
    """A branch made the RFC 3261 way (§8.1.1.7): a transaction id behind the cookie.

    A bare cookie carries no transaction id (RFC 4475 §3.2.1): match as RFC 2543."""
    return branch is not None and len(branch) > 7 and branch.startswith(BRANCH_COOKIE)


class Via:
    """One Via value. Its parameters are parsed on first use (usually for the branch)."""

    __slots__ = ("_param_text", "_params", "host", "port", "protocol", "raw", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None,
        params: Params | str | None = None,
        protocol: str = "SIP/2.0",
        raw: str = "",
    ) -> None:
        self.transport = transport  # upper case: UDP, TCP, TLS, SCTP, WS, WSS
        self.host = host
        self.port = port
        self.protocol = protocol
        self.raw = raw
        if isinstance(params, str):
            self._param_text = params
            self._params: Params | None = None
        else:
            self._param_text = ""
            self._params = params if params is not None else {}

    @property
    def params(self) -> Params:
        params = self._params
        return params if params is not None else self._parse_params()

    def _split_params(self, text: str) -> Params:
        return parse_params(text, "Via header")

    def _parse_params(self) -> Params:
        params = self._params = self._split_params(self._param_text)
        if "branch" in params and not params["branch"]:
            raise ParseError("Bad Via header: empty branch")
        return params

    def __str__(self) -> str:
        if not self.raw:
            port = f":{self.port}" if self.port is not None else ""
            params = format_params(self.params)
            self.raw = f"{self.protocol}/{self.transport} {self.host}{port}{params}"
        return self.raw

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    # The accessors below read ``_params`` themselves: one property call less each, and
    # they run for every message forwarded.
    @property
    def branch(self) -> str | None:
        params = self._params
        return (params if params is not None else self._parse_params()).get("branch")

    @property
    def received(self) -> str | None:
        params = self._params
        return (params if params is not None else self._parse_params()).get("received")

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        value = self.params.get("rport")
        if value and value.isdigit() and value.isascii() and len(value) <= 5:
            return int(value)
        return None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    @property
    def is_rfc3261(self) -> bool:
        return is_rfc3261_branch(self.branch)

    def response_address(self, default_port: int = 5060) -> tuple[str, int]:
        """Where a response goes per RFC 3261 §18.2.2 and RFC 3581 (UDP, no maddr)."""
        params = self.params  # read once: this runs for every response relayed
        host = params.get("received") or self.host
        if host.startswith("["):
            host = host[1:-1]
        rport = self.rport if "rport" in params else None
        return host, rport or self.port or default_port

    def replace(self, **changes: object) -> Via:
        values: dict[str, object] = {
            "transport": self.transport,
            "host": self.host,
            "port": self.port,
            "params": dict(self.params),
            "protocol": self.protocol,
        }
        values.update(changes)
        return Via(**values)  # type: ignore[arg-type]


class _PlainVia(Via):
    """A Via whose parameter text parse_via found to be plain (no blanks, no quotes):
    its parameters are split without matching that text again."""

    __slots__ = ()

    def _split_params(self, text: str) -> Params:
        return parse_plain_params(text, "Via header")


def has_plain_params(via: Via) -> bool:
    """Whether parse_via found ``via``'s parameter text plain: PLAIN_PARAM_CHARS only,
    no blanks or quotes."""
    return isinstance(via, _PlainVia)


# The usual shape in one match: single spaces, a known transport, a host name or IPv4
# address (not ending in '-'), an optional port, plain parameters (parsed when read).
# One regex call costs less than the half dozen string operations it replaces.
_PLAIN_VIA: Final = re.compile(
    r"SIP/2\.0/(UDP|TCP|TLS|SCTP|WSS?) ([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9._])?)"
    rf"(?::([0-9]{{1,5}}))?(?:;([{PLAIN_PARAM_CHARS}]+))?"
)


# "SIP/2.0/UDP host:port" (the text before the parameters) -> transport, host, port, for
# Vias of the usual shape: a few peers send most Vias, and a dict hit plus a check of the
# parameters costs less than matching the whole Via. Bounded (sip/memo.py): the text comes
# from packets.
MAX_SENT_BYS: Final = 4096
_SENT_BYS: Final = Memo[str, tuple[str, str, int | None]](MAX_SENT_BYS)


def parse_via(text: str) -> Via:
    sent_by, semi, param_text = text.partition(";")
    known = _SENT_BYS.table.get(sent_by)
    if known is not None and (not semi or match_plain_params(param_text)):
        transport, host, port = known
        return _PlainVia(transport, host, port, param_text, "SIP/2.0", text)
    match = _PLAIN_VIA.fullmatch(text)
    if match is not None:
        transport, host = match.group(1, 2)
        port_text: str | None = match.group(3)  # typed: compiled code checks each type
        port = int(port_text) if port_text is not None else None
        if port is None or port <= 65535:
            _SENT_BYS.put(sent_by, (transport, host, port))
            return _PlainVia(transport, host, port, param_text, "SIP/2.0", text)
    return _parse_via_slowly(text)


def made_via(sent_by: str, branch: str) -> Via:
    """``<sent_by>;branch=<branch>`` as ``parse_via`` reads that text, mostly without
    reading it: the Via a proxy pushes on each request it forwards. ``sent_by`` is
    ``SIP/2.0/<TRANSPORT> <host>:<port>``, ``branch`` of PLAIN_PARAM_CHARS only (what
    ``BranchMaker`` makes), so parse_via's memo of the sent-by decides as it would."""
    text = f"{sent_by};branch={branch}"
    known = _SENT_BYS.table.get(sent_by)
    if known is None:
        return parse_via(text)  # the first time (memoised when plain), or not plain
    transport, host, port = known
    return _PlainVia(transport, host, port, {"branch": branch}, "SIP/2.0", text)


def _parse_via_slowly(text: str) -> Via:
    match = _SENT.fullmatch(text)
    if match is None:
        raise ParseError("Bad Via header")
    name, version, transport, host = match.group(1, 2, 3, 4)
    port_text: str | None = match.group(5)
    param_text: str | None = match.group(6)
    if name.upper() != "SIP":
        raise ParseError("Bad Via header: protocol is not SIP")
    if host[0] == "[" or host[0] in "-." or host[-1] == "-":
        host, _ = split_hostport(host, "Via header")  # validates IPv6 and odd names
    port = None if port_text is None else parse_port(port_text, "Via header")
    return Via(transport.upper(), host, port, param_text or "", f"{name}/{version}", text.strip(WS))
