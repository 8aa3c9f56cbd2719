"""name-addr / addr-spec values: From, To, Contact, Route, Record-Route, Path, Refer-To."""

from __future__ import annotations

import re
from typing import Final

from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import (
    WS,
    Params,
    format_params,
    parse_int,
    parse_params,
    quote,
    unquote,
)
from sipfleet.sip.uri import SipUri, Uri, parse_uri

# RFC 3261 §25.1: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# Unquoted display names are tokens and blanks (non-ASCII tolerated, as phones send it).
_DISPLAY_TOKENS: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~\- \t\x80-\xff]+")


class Address:
    """One address with its header parameters (tag, expires, q, lr ...).

    The URI is parsed on first use: a proxy that only needs the From tag never pays for it.
    """

    __slots__ = ("_uri", "display", "params", "raw", "uri_text")

    def __init__(
        self,
        uri: Uri | str,
        display: str | None = None,
        params: Params | None = None,
        raw: str = "",
    ) -> None:
        if isinstance(uri, str):
            self.uri_text = uri
            self._uri: Uri | None = None
        else:
            self.uri_text = str(uri)
            self._uri = uri
        self.display = display  # as written on the wire (quoted or tokens)
        self.params: Params = params if params is not None else {}
        self.raw = raw

    @property
    def uri(self) -> Uri:
        if self._uri is None:
            try:
                self._uri = parse_uri(self.uri_text)
            except ParseError as exc:
                raise ParseError(f"Bad URI in address: {exc.reason}", exc.status) from None
        return self._uri

    def __str__(self) -> str:
        if not self.raw:
            self.raw = self.render()
        return self.raw

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"

    def render(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri_text}>{format_params(self.params)}"

    @property
    def display_name(self) -> str | None:
        """The display name without quotes, UTF-8 decoded."""
        if self.display is None:
            return None
        text = unquote(self.display)
        try:
            return text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return text

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        """The Contact ``expires`` parameter in seconds (None when absent)."""
        if "expires" not in self.params:
            return None
        value = self.params["expires"]
        if value is None:
            raise ParseError("Bad Contact expires parameter: no value")
        return parse_int(value, "Contact expires parameter", 2**32 - 1)

    @property
    def q(self) -> float | None:
        """The Contact ``q`` parameter, 0 to 1 (None when absent)."""
        if "q" not in self.params:
            return None
        value = self.params["q"]
        if value is None or _QVALUE.fullmatch(value) is None:
            raise ParseError("Bad q parameter in Contact header")
        return float(value)

    @property
    def sip_uri(self) -> SipUri:
        uri = self.uri
        if not isinstance(uri, SipUri):
            raise ParseError(f"Expected a sip or sips URI, got {uri.scheme}:")
        return uri

    def replace(
        self,
        *,
        uri: Uri | str | None = None,
        display: str | object | None = ...,
        params: Params | None = None,
    ) -> Address:
        """A copy with some parts changed (its text is rendered anew)."""
        return Address(
            self.uri_text if uri is None else uri,
            self.display if display is ... else display,  # type: ignore[arg-type]
            dict(self.params) if params is None else params,
        )

    def with_param(self, name: str, value: str | None) -> Address:
        params = dict(self.params)
        params[name.lower()] = value
        return self.replace(params=params)


def display_from_text(name: str) -> str:
    """Wire form of a display name given as Unicode text (always quoted)."""
    return quote(name.encode("utf-8").decode("latin-1"))


_QUOTED: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # unrolled: see grammar.py
_ADDR_SPEC: Final = re.compile(r"([^;<>\s\"]+)[ \t]*(?:;(.*))?", re.S)  # \s: rejects odd blanks


def parse_address(text: str, what: str) -> Address:
    return parse_trimmed_address(text.strip(WS), what)


def parse_trimmed_address(text: str, what: str) -> Address:
    """parse_address for text without surrounding blanks (what the header splitter gives)."""
    display: str | None
    if text[:1] == '"':
        quoted = _QUOTED.match(text)
        if quoted is None:
            raise ParseError(f"Bad {what} header: unterminated quoted string")
        display = quoted.group()
        lt = text.find("<", quoted.end())
        if lt == -1 or text[quoted.end() : lt].strip(WS):
            raise ParseError(f"Bad {what} header: display name without <URI>")
    else:
        lt = text.find("<")
        if lt == -1:
            return _parse_addr_spec(text, what)
        display = text[:lt].rstrip(WS) or None
        if display is not None:
            _check_display(display, what)
    gt = text.find(">", lt)
    if gt == -1:
        raise ParseError(f"Bad {what} header: missing '>'")
    uri_text = text[lt + 1 : gt]
    if "<" in uri_text or " " in uri_text or "\t" in uri_text:
        raise ParseError(f"Bad {what} header: bad characters in <URI>")
    param_text = text[gt + 1 :].lstrip(WS)
    if param_text:
        if param_text[0] != ";":
            raise ParseError(f"Bad {what} header: text after '>'")
        param_text = param_text[1:]
    return _address(uri_text, display, param_text, text, what)


def _parse_addr_spec(text: str, what: str) -> Address:
    """An address without <>: parameters after the URI belong to the header (§20)."""
    match = _ADDR_SPEC.fullmatch(text)
    if match is None:
        raise ParseError(_address_defect(text, what))
    uri_text: str = match.group(1)
    param_text: str | None = match.group(2)
    if "?" in uri_text:  # RFC 3261 §20: a URI with headers must be in <> (RFC 4475 §3.1.2.13)
        raise ParseError(f"Bad {what} header: a URI with '?' must be enclosed in <>")
    return _address(uri_text, None, param_text, text, what)


def _address(
    uri_text: str,
    display: str | None,
    param_text: str | None,
    text: str,
    what: str,
) -> Address:
    colon = uri_text.find(":")
    if colon <= 0 or colon == len(uri_text) - 1:
        raise ParseError(f"Bad {what} header: bad URI")
    params = parse_params(param_text, f"{what} header") if param_text else {}
    return Address(uri_text, display, params, text)


def _address_defect(text: str, what: str) -> str:
    """Name what is wrong with an address that matched neither form."""
    stripped = text.strip(WS)
    if not stripped:
        return f"Empty {what} header"
    if stripped.count('"') % 2:
        return f"Bad {what} header: unterminated quoted string"
    if "<" in stripped and ">" not in stripped:
        return f"Bad {what} header: missing '>'"
    if "<" not in stripped and any(ch in stripped.partition(";")[0] for ch in " \t"):
        return f"Bad {what} header: URI with spaces must be in <>"
    if "<" in stripped:
        return f"Bad {what} header: bad name-addr"
    return f"Bad {what} header"


def _check_display(display: str, what: str) -> None:
    if _DISPLAY_TOKENS.fullmatch(display) is None:
        raise ParseError(f"Bad {what} header: display name must be quoted")
