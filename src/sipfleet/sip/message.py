"""SIP requests and responses that keep their bytes.

A parsed message holds its header lines exactly as received. Typed accessors parse a
header the first time they are asked and cache the result; the edits a proxy makes
rewrite only the lines they touch, and ``serialize`` returns the original bytes when
nothing was changed. Header text is ``str`` decoded as latin-1, so every byte survives.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from sipfleet.sip.address import Address, parse_address, parse_trimmed_address
from sipfleet.sip.digest import AuthHeader, parse_auth_header
from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import WS, parse_int, split_first, split_outside_quotes, split_values
from sipfleet.sip.headers import HEADER_KEYS, header_key, spelling
from sipfleet.sip.memo import Memo
from sipfleet.sip.uri import Uri, parse_uri
from sipfleet.sip.via import Via, parse_via

SIP_VERSION: Final = "SIP/2.0"
MAX_CSEQ: Final = 2**31 - 1
MAX_EXPIRES: Final = 2**32 - 1

_CSEQ: Final = re.compile(r"([0-9]+)[ \t]+([A-Za-z0-9.!%*_+`'~-]+)")


KNOWN_METHODS: Final = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "MESSAGE",
        "SUBSCRIBE",
        "NOTIFY",
        "REFER",
        "INFO",
        "UPDATE",
        "PRACK",
        "PUBLISH",
    }
)


class CSeq(NamedTuple):
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


_new_cseq: Final = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path

# Cache entries for the first element of a list header, dropped with the whole list.
# "top-via-text": the new top Via's text, known when one was popped off the same line (a
# relay pops our Via and reads the next).
_TOP_OF: Final[dict[str, tuple[str, ...]]] = {
    "via": ("top-via", "top-via-text"),
    "route": ("top-route",),
}
# Max-Forwards line -> value: a few dozen lines cover all traffic, and a dict hit costs
# less than cutting, checking and converting the digits. Bounded (sip/memo.py): lines come
# from packets; the lines we write ourselves stay.
_MAX_FORWARDS_LINES: Final = tuple(f"Max-Forwards: {value}" for value in range(256))
MAX_HOP_COUNTS: Final = 1024
_HOP_COUNTS: Final = Memo[str, int](
    MAX_HOP_COUNTS, {line: value for value, line in enumerate(_MAX_FORWARDS_LINES)}
)


def header_value(line: str) -> str:
    """The value of a header line: after the colon, trimmed, folded lines joined."""
    value = line[line.find(":") + 1 :]
    if "\n" in value:  # folded: the parser joined the physical lines with CRLF
        value = " ".join(part.strip(WS) for part in value.split("\r\n"))
    return value.strip(WS)


def header_line(key: str, value: str) -> str:
    return f"{spelling(key)}: {value}"


def index_of(keys: list[str], key: str) -> int:
    """Where ``key`` first stands in ``keys``; -1 when it does not. Compiled, this loop of
    string compares costs less than ``keys.index``, and far less than the ValueError
    that index raises for an absent header (Expires, on most requests) once caught."""
    for i in range(len(keys)):
        if keys[i] == key:
            return i
    return -1


def stands_after(keys: list[str], key: str, at: int) -> bool:
    """Whether ``key`` is in ``keys`` after position ``at`` (a second Max-Forwards or
    Content-Length). Compiled, this loop of string compares costs a fraction of
    ``key in keys[at + 1 :]``, which copies the list and compares through the generic path."""
    return any(keys[i] == key for i in range(at + 1, len(keys)))


class Message:
    """What requests and responses share: header lines, body and the typed accessors.

    ``lines`` holds each header line as received (folded lines merged, CRLFs kept) and
    ``keys`` the canonical name of each, in the same order.
    """

    __slots__ = ("_cache", "_dirty", "_start", "body", "keys", "lines", "raw")

    def __init__(
        self,
        lines: list[str],
        keys: list[str],
        body: bytes = b"",
        raw: bytes = b"",
        start: str | None = None,
    ) -> None:
        self.lines = lines
        self.keys = keys
        self.body = body
        self.raw = raw
        self._dirty = not raw
        self._cache: dict[str, Any] = {}
        self._start = start  # the start line as received, while it holds

    # -- start line --------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    @property
    def is_request(self) -> bool:
        return False

    # -- generic header access ---------------------------------------------------------
    def has(self, name: str) -> bool:
        return index_of(self.keys, header_key(name)) >= 0  # not 'in': see index_of

    def _positions(self, key: str) -> list[int]:
        # One pass of string compares (see index_of): 'in', index and count cost a
        # generic call each in the compiled build.
        keys = self.keys
        return [i for i in range(len(keys)) if keys[i] == key]

    def header(self, name: str) -> str | None:
        """The value of the first header of that name, or None."""
        at = index_of(self.keys, header_key(name))
        return header_value(self.lines[at]) if at >= 0 else None

    def header_lines(self, name: str) -> list[str]:
        """Each header of that name, one value per line, commas untouched."""
        lines = self.lines
        return [header_value(lines[i]) for i in self._positions(header_key(name))]

    def header_values(self, name: str) -> list[str]:
        """All elements of a comma-separated list header, across every line."""
        return self._values(header_key(name))

    def _values(self, key: str) -> list[str]:
        keys = self.keys
        lines = self.lines
        values: list[str] = []
        for at in range(len(keys)):  # one pass: see _positions
            if keys[at] == key:
                values.extend(split_values(header_value(lines[at])))
        return values

    def first_value(self, name: str) -> str | None:
        """The first element of a list header (the top Via, the top Route) without
        splitting the others; None when there is none."""
        # The name's key from the cache without a call: a relay asks for every response.
        return self._first_value(HEADER_KEYS.table.get(name) or header_key(name))

    def _first_value(self, key: str) -> str | None:
        at = index_of(self.keys, key)
        if at < 0:
            return None
        line = self.lines[at]
        value = line[line.find(":") + 1 :]
        if "\n" in value:  # folded
            value = header_value(line)
        elif "," not in value:  # one value: the usual case
            value = value.strip(WS)
            if value:
                return value
        first, _ = split_first(value)
        if first:
            return first
        values = self._values(key)  # the first line holds no value at all ("Via: ,")
        return values[0] if values else None

    def _single(self, key: str, what: str) -> str | None:
        keys = self.keys
        at = index_of(keys, key)
        if at < 0:
            return None
        if stands_after(keys, key, at):
            raise ParseError(f"Multiple {what} headers")
        line = self.lines[at]
        value = line[line.find(":") + 1 :]
        return value.strip(WS) if "\n" not in value else header_value(line)

    def _required(self, key: str, what: str) -> str:
        value = self._single(key, what)
        if value is None:
            raise ParseError(f"Missing {what} header")
        return value

    # -- typed accessors (parsed once, cached) -------------------------------------------
    @property
    def vias(self) -> list[Via]:
        cache = self._cache
        vias: list[Via] | None = cache.get("via")
        if vias is None:
            texts = self._values("via")
            top: Via | None = cache.get("top-via")
            if top is None:
                vias = [parse_via(text) for text in texts]
            else:  # the same object as top_via gave
                vias = [top, *[parse_via(text) for text in texts[1:]]]
            cache["via"] = vias
        return vias

    @property
    def top_via(self) -> Via:
        """The first Via, parsed alone: all that forwarding and transaction matching read
        (``vias`` parses the others when asked)."""
        cache = self._cache
        via: Via | None = cache.get("top-via")
        if via is None:
            vias: list[Via] | None = cache.get("via")
            if vias is not None:
                if not vias:
                    raise ParseError("Missing Via header")
                return vias[0]
            text = cache.get("top-via-text") or self._first_value("via")
            if text is None:
                raise ParseError("Missing Via header")
            via = cache["top-via"] = parse_via(text)
        return via

    @property
    def from_(self) -> Address:
        return self._address("from", "From")

    @property
    def to(self) -> Address:
        return self._address("to", "To")

    def _address(self, key: str, what: str) -> Address:
        address: Address | None = self._cache.get(key)
        if address is None:
            text = self._single(key, what)
            if text is None:
                raise ParseError(f"Missing {what} header")
            if "," in text and len(parts := split_outside_quotes(text, ",")) > 1:
                if "<" not in parts[0] and ":" not in parts[0]:
                    raise ParseError(f"Bad {what} header: a display name with ',' must be quoted")
                raise ParseError(f"Multiple values in {what} header")
            address = parse_trimmed_address(text, what)
            self._cache[key] = address
        return address

    @property
    def call_id(self) -> str:
        call_id: str | None = self._cache.get("call-id")
        if call_id is None:
            call_id = self._required("call-id", "Call-ID")
            if " " in call_id or "\t" in call_id or not call_id:  # CR, LF: see the parser
                raise ParseError("Bad Call-ID header")
            self._cache["call-id"] = call_id
        return call_id

    @property
    def cseq(self) -> CSeq:
        cseq: CSeq | None = self._cache.get("cseq")
        if cseq is None:
            text = self._required("cseq", "CSeq")
            digits, _, method = text.partition(" ")
            if method not in KNOWN_METHODS or not (digits.isdigit() and digits.isascii()):
                match = _CSEQ.fullmatch(text)  # odd spacing, or an extension method
                if match is None:
                    raise ParseError("Bad CSeq header")
                digits, method = match[1], match[2]
            number = int(digits) if len(digits) <= 10 else MAX_CSEQ + 1
            if number > MAX_CSEQ:
                raise ParseError("CSeq number out of range")
            cseq = _new_cseq(CSeq, (number, method))
            self._cache["cseq"] = cseq
        return cseq

    @property
    def max_forwards(self) -> int | None:
        cache = self._cache
        if "max-forwards" in cache:
            return cache["max-forwards"]  # type: ignore[no-any-return]
        keys = self.keys
        at = index_of(keys, "max-forwards")  # one scan up to it and one past it
        if at >= 0 and stands_after(keys, "max-forwards", at):
            raise ParseError("Multiple Max-Forwards headers")
        value = None
        if at >= 0:
            line = self.lines[at]
            value = _HOP_COUNTS.table.get(line)
            if value is None:
                text = header_value(line)
                if not (text.isdigit() and text.isascii() and len(text) <= 10):
                    raise ParseError("Bad Max-Forwards header")
                value = int(text)  # leading zeros are legal (RFC 4475 §3.1.1.1)
                if value > 255:
                    raise ParseError("Bad Max-Forwards header")
                _HOP_COUNTS.put(line, value)
        cache["max-forwards"] = value
        return value

    @property
    def expires(self) -> int | None:
        if "expires" in self._cache:
            return self._cache["expires"]  # type: ignore[no-any-return]
        text = self._single("expires", "Expires")
        value = None if text is None else parse_int(text, "Expires", MAX_EXPIRES)
        self._cache["expires"] = value
        return value

    @property
    def content_length(self) -> int | None:
        text = self._single("content-length", "Content-Length")
        if text is None:
            return None
        if text.isdigit() and len(text) <= 10 and text.isascii():
            return int(text)
        raise ParseError("Bad Content-Length header")

    @property
    def content_type(self) -> str | None:
        text = self._single("content-type", "Content-Type")
        return None if text is None else text.split(";", 1)[0].strip(WS).lower()

    @property
    def contact_is_star(self) -> bool:
        values = self.header_values("contact")
        return any(value == "*" for value in values)

    @property
    def contacts(self) -> list[Address]:
        """Contact addresses; raises ParseError for '*' mixed with others."""
        contacts: list[Address] | None = self._cache.get("contact")
        if contacts is None:
            values = self._values("contact")
            if "*" in values:
                if len(values) > 1:
                    raise ParseError("Contact '*' mixed with other contacts")
                contacts = []
            else:
                contacts = [parse_trimmed_address(value, "Contact") for value in values]
            self._cache["contact"] = contacts
        return contacts

    @property
    def routes(self) -> list[Address]:
        return self._address_list("route", "Route")

    @property
    def top_route(self) -> Address | None:
        """The first Route, parsed alone: all a proxy's route processing looks at."""
        routes: list[Address] | None = self._cache.get("route")
        if routes is not None:
            return routes[0] if routes else None
        if "top-route" in self._cache:
            return self._cache["top-route"]  # type: ignore[no-any-return]
        top: Address | None
        at = index_of(self.keys, "route")
        if at >= 0:
            text = header_value(self.lines[at])
            if text[:1] == "<" and '"' not in text:  # the usual shape: cut after the first '>'
                comma = text.find(",", text.find(">"))
                first = [text[:comma].rstrip(WS) if comma != -1 else text]
            else:
                first = split_values(text)
            top = parse_trimmed_address(first[0], "Route") if first else None
        else:
            top = None
        self._cache["top-route"] = top
        return top

    @property
    def record_routes(self) -> list[Address]:
        return self._address_list("record-route", "Record-Route")

    @property
    def paths(self) -> list[Address]:
        return self._address_list("path", "Path")

    def _address_list(self, key: str, what: str) -> list[Address]:
        found: list[Address] | None = self._cache.get(key)
        if found is None:
            found = [parse_trimmed_address(value, what) for value in self._values(key)]
            self._cache[key] = found
        return found

    def option_tags(self, name: str) -> list[str]:
        """Require / Proxy-Require / Supported / Unsupported, lower case."""
        return [tag.lower() for tag in self.header_values(name)]

    @property
    def require(self) -> list[str]:
        return self.option_tags("require")

    @property
    def proxy_require(self) -> list[str]:
        return self.option_tags("proxy-require")

    @property
    def supported(self) -> list[str]:
        return self.option_tags("supported")

    @property
    def unsupported(self) -> list[str]:
        return self.option_tags("unsupported")

    def auth_headers(self, name: str) -> list[AuthHeader]:
        """Authorization, Proxy-Authorization, WWW-Authenticate or Proxy-Authenticate."""
        return [parse_auth_header(value) for value in self.header_lines(name)]

    @property
    def authorization(self) -> list[AuthHeader]:
        return self.auth_headers("authorization")

    @property
    def proxy_authorization(self) -> list[AuthHeader]:
        return self.auth_headers("proxy-authorization")

    @property
    def www_authenticate(self) -> list[AuthHeader]:
        return self.auth_headers("www-authenticate")

    @property
    def proxy_authenticate(self) -> list[AuthHeader]:
        return self.auth_headers("proxy-authenticate")

    # -- edits ------------------------------------------------------------------------
    def _changed(self, key: str) -> None:
        self._dirty = True
        cache = self._cache
        if not cache:  # nothing read yet (a relayed response, when its Via is popped)
            return
        if key in cache:  # 'in' and del: compiled, dict.pop is a method call
            del cache[key]
        for derived in _TOP_OF.get(key, ()):
            if derived in cache:
                del cache[derived]

    def add_header(self, name: str, value: str, top: bool = False) -> None:
        """Add a header: above the others of its name when ``top``, else after them
        (or at the end when there are none)."""
        key = header_key(name)
        self._add_line(key, header_line(key, value), top)

    def _add_line(self, key: str, line: str, top: bool) -> None:
        """add_header's work, for a line already written (push_via's: every request)."""
        keys = self.keys
        if top:  # no list built: a pushed Via mostly lands at 0
            at = index_of(keys, key)
            if at < 0:
                at = self._top_position()
        else:
            positions = self._positions(key)
            at = positions[-1] + 1 if positions else len(keys)
        self.lines.insert(at, line)
        keys.insert(at, key)
        self._changed(key)

    def _top_position(self) -> int:
        """Where a new routing header goes: after the Via block."""
        vias = self._positions("via")
        return vias[-1] + 1 if vias else 0

    def set_header(self, name: str, value: str) -> None:
        """Replace every header of that name with one line holding ``value``."""
        key = header_key(name)
        self._set_line(key, header_line(key, value))

    def _set_line(self, key: str, line: str) -> None:
        """set_header's work, for a line already written (decrement_max_forwards': every
        request)."""
        keys = self.keys
        lines = self.lines
        first = index_of(keys, key)
        if first < 0:
            self._add_line(key, line, False)
            return
        lines[first] = line
        for at in range(len(keys) - 1, first, -1):  # compiled: see stands_after
            if keys[at] == key:
                del lines[at]
                del keys[at]
        self._changed(key)

    def remove_header(self, name: str) -> int:
        """Remove every header of that name; returns how many lines went."""
        key = header_key(name)
        positions = self._positions(key)
        for at in reversed(positions):
            del self.lines[at]
            del self.keys[at]
        if positions:
            self._changed(key)
        return len(positions)

    def pop_first_value(self, name: str, accept: Callable[[str], bool] | None = None) -> str | None:
        """Remove the first element of a list header (a Via, a Route) and return it; with
        ``accept``, only when ``accept(element)`` says so (else None, the element stays:
        a relay checks that the top Via is its own and pops it in one step).

        The rest of its line is kept as received (not split and re-joined)."""
        key = HEADER_KEYS.table.get(name) or header_key(name)  # as in first_value
        keys = self.keys
        lines = self.lines
        while (at := index_of(keys, key)) >= 0:
            line = lines[at]
            colon = line.find(":")
            value = line[colon + 1 :]
            first, rest = split_first(value if "\n" not in value else header_value(line))
            if first and accept is not None and not accept(first):
                return None
            rest = rest.lstrip(" \t,")  # empty elements before the next one go too
            if rest:
                lines[at] = line[: colon + 1] + " " + rest
            else:
                del lines[at]
                del keys[at]
            self._changed(key)
            if first:  # a line with no value at all ("Route: ,") is dropped, not returned
                if rest and key == "via" and '"' not in rest and "<" not in rest:
                    self._cache["top-via-text"] = rest.partition(",")[0].rstrip(WS)
                return first
        return None

    def push_via(self, via: Via | str) -> None:
        """Our Via on top: add_header("via", str(via), top=True). A ``Via`` given is what
        ``top_via`` returns after (it must be what parse_via makes of its text, as
        ``via.made_via`` is): a client transaction reads it at once."""
        self._add_line("via", "Via: " + str(via), True)
        if isinstance(via, Via):
            self._cache["top-via"] = via

    def replace_top_via(self, via: str) -> None:
        """``pop_first_value("via")`` then ``push_via(via)``: the top Via rewritten (a
        stateless hop stamping ``received``/``rport``). Its line is rewritten in place
        when that gives the same lines, as it does when the top Via stands alone on the
        first Via line and push_via would put the new one where it stood."""
        keys = self.keys
        at = index_of(keys, "via")
        if at >= 0:
            line = self.lines[at]
            value = line[line.find(":") + 1 :]
            alone = "," not in value and "\n" not in value and value.strip(WS) != ""
            next_is_via = at + 1 < len(keys) and keys[at + 1] == "via"
            if alone and (next_is_via or (at == 0 and not stands_after(keys, "via", at))):
                self.lines[at] = "Via: " + via
                self._changed("via")
                return
        self.pop_first_value("via")
        self.push_via(via)

    def pop_via(self) -> Via | None:
        text = self.pop_first_value("via")
        return parse_via(text) if text is not None else None

    def add_record_route(self, address: Address | str) -> None:
        self.add_header("record-route", str(address), top=True)

    def add_path(self, address: Address | str) -> None:
        self.add_header("path", str(address), top=True)

    def pop_route(self) -> Address | None:
        text = self.pop_first_value("route")
        return parse_address(text, "Route") if text is not None else None

    def push_route(self, address: Address | str) -> None:
        self.add_header("route", str(address), top=True)

    def set_from(self, address: Address | str) -> None:
        self.set_header("from", str(address))

    def set_to(self, address: Address | str) -> None:
        self.set_header("to", str(address))

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        self.body = body
        self._dirty = True
        if content_type is not None:
            self.set_header("content-type", content_type)
        elif not body:
            self.remove_header("content-type")
        self.set_header("content-length", str(len(body)))

    # -- output -----------------------------------------------------------------------
    def serialize(self) -> bytes:
        if not self._dirty:
            return self.raw
        start = self._start or self.start_line()
        lines = self.lines
        keys = self.keys  # Content-Length is mostly the last header: one look, no scan
        if not (keys and keys[-1] == "content-length") and "content-length" not in keys:
            lines = [*lines, f"Content-Length: {len(self.body)}"]
        # One join of the header lines (never none: Content-Length is one) and one string
        # formatted around it, instead of a list built for the start and the empty line.
        head = "\r\n".join(lines)
        data = f"{start}\r\n{head}\r\n\r\n".encode("latin-1")
        if self.body:
            data += self.body
        self.raw = data
        self._dirty = False
        return data

    def __bytes__(self) -> bytes:
        return self.serialize()

    def copy(self) -> Any:
        """An independent copy to edit (each branch of a fork gets one)."""
        clone = self._with_lines(list(self.lines), list(self.keys))
        clone._dirty = self._dirty
        return clone

    def _with_lines(self, lines: list[str], keys: list[str]) -> Message:
        """This message's start line and body with these header lines (a constructor
        call: compiled classes cannot be created with object.__new__)."""
        raise NotImplementedError


class Request(Message):
    __slots__ = ("_uri", "method", "uri_text", "version")

    def __init__(
        self,
        method: str,
        uri: Uri | str,
        lines: list[str],
        keys: list[str],
        body: bytes = b"",
        raw: bytes = b"",
        version: str = SIP_VERSION,
        start: str | None = None,
    ) -> None:
        """``start``: the request line as received, which ``serialize`` then reuses (the
        parser's; method, URI and version must not change but through ``uri``)."""
        super().__init__(lines, keys, body, raw, start)  # compiled: a direct call
        self.method = method
        self.version = version
        if isinstance(uri, str):
            self.uri_text = uri
            self._uri: Uri | None = None
        else:
            self.uri_text = str(uri)
            self._uri = uri

    @classmethod
    def build(
        cls,
        method: str,
        uri: Uri | str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
    ) -> Request:
        """A new request from (name, value) pairs; Content-Length is added."""
        keys = [header_key(name) for name, _ in headers]
        lines = [header_line(key, value) for key, (_, value) in zip(keys, headers, strict=True)]
        keys.append("content-length")
        lines.append(header_line("content-length", str(len(body))))
        return cls(method, uri, lines, keys, body)

    @property
    def is_request(self) -> bool:
        return True

    @property
    def uri(self) -> Uri:
        if self._uri is None:
            self._uri = parse_uri(self.uri_text, allow_other_schemes=False)
        return self._uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self.uri_text = str(value)
        self._start = None
        self._dirty = True

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    def _with_lines(self, lines: list[str], keys: list[str]) -> Request:
        start, uri = self._start, self.uri_text
        clone = Request(self.method, uri, lines, keys, self.body, self.raw, self.version, start)
        clone._uri = self._uri
        return clone

    def decrement_max_forwards(self) -> int:
        """§16.6 step 3: decrement, or add 70 when absent. Returns the new value."""
        current = self.max_forwards  # raises unless there is at most one, valid
        value = 70 if current is None else current - 1
        self._set_line("max-forwards", _MAX_FORWARDS_LINES[value])  # no formatting
        self._cache["max-forwards"] = value
        return value

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


class Response(Message):
    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str,
        lines: list[str],
        keys: list[str],
        body: bytes = b"",
        raw: bytes = b"",
        version: str = SIP_VERSION,
        start: str | None = None,
    ) -> None:
        """``start``: the status line as received, reused by ``serialize`` (status,
        reason and version must then not change)."""
        super().__init__(lines, keys, body, raw, start)
        self.status = status
        self.reason = reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _with_lines(self, lines: list[str], keys: list[str]) -> Response:
        status, reason, start = self.status, self.reason, self._start
        return Response(status, reason, lines, keys, self.body, self.raw, self.version, start)

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_final(self) -> bool:
        return self.status >= 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"
