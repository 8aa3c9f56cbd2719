"""A request's head read from its lines, as the parser and ``Message`` read it, without
a ``Message``: what the fast paths (the LB's, core/lb/fastpath.py; the proxy's 2xx ACK,
core/proxy/fastack.py) share.

Each reader here answers only for text written plainly (as sipp and phones write it) and
gives "" / None / False for anything else, which the caller then declines: the present
path, with the parser, handles it. What is read is what the accessors would read; where
a reader is memoised, the docstring says why the memo's key is enough. The edits at the
end splice a stateless hop's changes into the lines as ``Message`` makes them.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

from sipfleet.sip.address import Address, parse_trimmed_address
from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import WS
from sipfleet.sip.headers import COMPACT_FORMS, HEADER_KEYS, header_key
from sipfleet.sip.memo import Memo

VIA_LINE: Final = "Via: "
DASH: Final = 45  # ord("-")
DOT: Final = 46  # ord(".")
MAX_LENGTH_DIGITS: Final = 10  # as the parser reads Content-Length
_LENGTHS: Final = Memo[str, int](1024)  # Content-Length line -> its value
CREDENTIALS: Final = frozenset({"authorization", "proxy-authorization"})
TAG: Final = ";tag="
CUT: Final = "\x00"
MAX_ADDRESSES: Final = 4096
_ADDRESSES: Final = Memo[str, bool](MAX_ADDRESSES)  # see tag_of
MAX_HOPS_VALUE: Final = 255
MAX_FORWARDS_LINES: Final = tuple(f"Max-Forwards: {value}" for value in range(MAX_HOPS_VALUE + 1))
HOP_COUNTS: Final = Memo[str, int](
    1024, {line: value for value, line in enumerate(MAX_FORWARDS_LINES)}
)  # Max-Forwards line -> its value, as Message keeps them
# Header names as phones and sipp spell them, which HeadLines reads without slicing the
# name out and looking it up (``name_key``): a request and its response carry about
# twenty lines, and each slice, hash and lookup cost more than the rest of its reading.
COMMON_NAMES: Final = (
    *("Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length"),
    *("Content-Type", "User-Agent", "Subject", "Expires", "Allow", "Supported", "Route"),
    *("Record-Route", "Server", "Accept", "Authorization", "WWW-Authenticate", "Path"),
    *("Proxy-Authorization", "Proxy-Authenticate", "Event", "Allow-Events", "Require"),
    *("Session-Expires", "Min-SE", "P-Asserted-Identity", "Privacy", "Date", "Reason"),
    *("Refer-To", "Referred-By", "RSeq", "RAck", "Call-Info", "Accept-Language"),
    *("Accept-Encoding", "Organization", "Warning", "Timestamp", "Min-Expires"),
    *("Retry-After", "Unsupported", "Proxy-Require", "Content-Disposition", "Diversion"),
    *("Content-Encoding", "Subscription-State", "P-Preferred-Identity", "Alert-Info"),
    *("Remote-Party-ID", "Identity", "Priority", "Replaces", "Service-Route"),
    *("via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length"),
    *("content-type", "user-agent", "expires"),
    *COMPACT_FORMS,  # "v", "i", "m", ...: the parser's own list
)
NO_LINES: Final[list[int]] = []  # HeadLines' routes and contacts when not read
NAME_SLOTS: Final = 1023  # a mask: 1,024 slots, where these names fall apart
MAX_COMMON_NAME: Final = 24  # longer than any of them
COLON: Final = 58  # ord(":")


def _name_slot(length: int, first: int, last: int) -> int:
    """Where a name falls (``name_key`` computes it in place)."""
    return (length * 7 + first * 112 + last) & NAME_SLOTS


def _name_table() -> tuple[list[str], list[str]]:
    """Each common name at its slot, with its key as the parser gives it; a name whose
    slot is taken is left out (read by lookup, as any other name)."""
    names = [""] * (NAME_SLOTS + 1)
    keys = [""] * (NAME_SLOTS + 1)
    for name in COMMON_NAMES:
        slot = _name_slot(len(name), ord(name[0]), ord(name[-1]))
        if not names[slot]:
            names[slot], keys[slot] = name, header_key(name)
    return names, keys


_NAME_TABLE: Final = _name_table()
_NAMES: Final = _NAME_TABLE[0]  # Final: a static of the compiled module, not a
_NAME_KEYS: Final = _NAME_TABLE[1]  # lookup in its globals per line


def alnum_besides(text: str, one: str, other: str) -> bool:
    """Whether ``text`` holds ASCII letters or digits (one at least), and nothing else but
    the characters ``one`` and ``other``: ``text`` with them replaced away is ASCII and
    ``isalnum``. Read one character code at a time (compiled, ``ord(text[at])`` is a
    read of the string's buffer): the two replaces it stands for made two new strings
    for most branches and tags."""
    if len(one) != 1 or len(other) != 1 or one.isalnum() or other.isalnum():
        return _alnum_replaced(text, one, other)  # not one character besides the rest
    return _alnum_besides_codes(text, ord(one), ord(other))


def alnum_dash_dot(text: str) -> bool:
    """``alnum_besides(text, "-", ".")``: what branches and tags are checked with."""
    return _alnum_besides_codes(text, DASH, DOT)


def _alnum_besides_codes(text: str, first: int, second: int) -> bool:
    """``alnum_besides`` with the two characters besides by their codes (not letters)."""
    letters = False
    size: i64 = len(text)
    at: i64 = 0
    while at < size:  # native integers: no tagged-int checks per character
        code = ord(text[at])
        at += 1
        if 97 <= code <= 122 or 65 <= code <= 90 or 48 <= code <= 57:
            letters = True
        elif code != first and code != second:
            return False
    return letters


def _alnum_replaced(text: str, one: str, other: str) -> bool:
    """What ``alnum_besides`` stands for, with ``one`` and ``other`` of any length."""
    bare = text
    if one in bare:
        bare = bare.replace(one, "")
    if other in bare:
        bare = bare.replace(other, "")
    return bare.isalnum() and bare.isascii()


def head_end_of(text: str) -> int:
    """Where the blank line that ends the head starts (-1: none), searched from the end:
    the messages a relay passes most (OPTIONS, 1xx, ACK, BYE) have no body, and their
    blank line is found at once where a search from the start reads the whole head.
    With a body that holds a blank line too (multipart), a later one is found: the head
    so cut then holds the true blank line as an empty line, which HeadLines reads as a
    name the parser has not met (not ``known``), so such a message goes the parsed way."""
    return text.rfind("\r\n\r\n")


def clean(lines: list[str]) -> bool:
    """No NUL, no CR or LF but those that end lines: what the parser rejects (or, for
    bare-LF line ends, reads another way) is left to it."""
    joined = "".join(lines)  # one copy, then three memchr
    return "\r" not in joined and "\n" not in joined and "\x00" not in joined


def length_is(line: str, body_length: int) -> bool:
    """Whether the Content-Length ``line`` reads, as the parser reads it, ``body_length``
    (a missing one the present path adds; one that differs trims or is refused).
    Memoised by the line, as the parser does ("Content-Length: 0" most of the time)."""
    length = _LENGTHS.table.get(line)
    if length is None:
        value = line[line.find(":") + 1 :].strip(WS)
        if not (value.isdigit() and value.isascii() and len(value) <= MAX_LENGTH_DIGITS):
            return False
        length = _LENGTHS.put(line, int(value))
    return length == body_length


def call_id_of(line: str) -> str:
    """The Call-ID of its line as Message.call_id reads it; "" when it refuses it."""
    call_id = line[line.find(":") + 1 :].strip(WS)
    return "" if " " in call_id or "\t" in call_id else call_id


def tag_of(line: str, what: str) -> str:
    """The tag of a From or To line, as Message.from_ / to read it; "" when it has none
    or is not written plainly (a comma, blanks among the parameters, another "tag=",
    a tag value other than letters, digits, '-' and '.').

    Memoised, as the Router's Route URIs are, by the value with the tag value cut out
    (each dialog has its own): whether the address parses and its tag is the value at
    that place depends on nothing else, once the value is plain and is the only one a
    parameter named tag could take."""
    value = line[line.find(":") + 1 :].strip(WS)
    at = value.rfind(TAG)
    if at < 0 or "," in value:
        return ""
    if value[:1] == "<" and value.find(">") == at - 1:
        tag = _bare_tag(value, at)  # <URI>;tag=X, as sipp and most phones write it
        if tag:
            return tag
    start = at + len(TAG)
    end = value.find(";", start)
    if end < 0:
        end = len(value)
    tag = value[start:end]
    if not alnum_dash_dot(tag):
        return ""
    params = value[value.rfind(">") + 1 :]  # the whole value for an addr-spec
    if " " in params or "\t" in params or '"' in params or value.lower().count("tag=") != 1:
        return ""
    key = value[:start] + CUT + value[end:]
    known = _ADDRESSES.table.get(key)
    if known is None:
        known = _ADDRESSES.put(key, _tag_parsed(value, what) == tag)
    return tag if known else ""


def _bare_tag(value: str, at: int) -> str:
    """The tag of ``<URI>;tag=X`` (``at``: where ``;tag=`` starts, right after the first
    '>'), as parse_trimmed_address reads it: no display name, the URI with a scheme and
    no blank or '<', one plain parameter; "" when it is not so (then read the long way)."""
    tag = value[at + len(TAG) :]
    uri = value[1 : at - 1]
    colon = uri.find(":")
    if colon <= 0 or colon == len(uri) - 1 or " " in uri or "\t" in uri or "<" in uri:
        return ""
    return tag if alnum_dash_dot(tag) else ""


def _tag_parsed(value: str, what: str) -> str | None:
    try:
        return parse_trimmed_address(value, what).tag
    except ParseError:
        return None  # 400 from the present path


def untagged(line: str, what: str) -> bool:
    """Whether a From or To line reads, as Message.from_ / to read it, as an address
    without a tag (a dialog-creating request's To); False when it has one, holds a comma
    (the accessors may refuse it) or the parser refuses it."""
    value = line[line.find(":") + 1 :].strip(WS)
    if "," in value:
        return False
    try:
        return parse_trimmed_address(value, what).tag is None
    except ParseError:
        return False  # 400 from the present path


def route_values(lines: list[str], at_lines: list[int]) -> list[Address] | None:
    """The Routes of lines ``at_lines``, as Message.routes reads them, when each is
    written ``<URI>`` (one or more on a line, comma-separated, as sipp writes them): no
    quote, blank, comma or angle bracket inside, no empty element, no folded line; else
    None. What the parser checks of such a value is checked here (a URI with a scheme
    and more); the URIs are read by the Router (a bad one raises its ParseError)."""
    routes: list[Address] = []
    for at in at_lines:
        line = lines[at]
        if at + 1 < len(lines) and lines[at + 1][:1] in WS:
            return None  # folded
        for part in line[line.find(":") + 1 :].split(","):
            value = part.strip(WS)
            if len(value) < 2 or value[0] != "<" or value[-1] != ">":
                return None
            uri = value[1:-1]
            colon = uri.find(":")
            if colon <= 0 or colon == len(uri) - 1 or not _plain_route_uri(uri):
                return None
            routes.append(Address(uri, None, {}, value))
    return routes


def _plain_route_uri(uri: str) -> bool:
    return not ("<" in uri or ">" in uri or " " in uri or "\t" in uri or '"' in uri)


def pop_routes(lines: list[str], at_lines: list[int], count: int) -> None:
    """The first ``count`` Routes removed as Message.pop_first_value removes them, one
    after the other: a line emptied goes, the rest of a line is kept as received after
    ``Name: ``. The Routes are those ``route_values`` read: one per comma."""
    gone: list[int] = []
    for at in at_lines:
        line = lines[at]
        colon = line.find(":")
        parts = line[colon + 1 :].split(",")
        if len(parts) <= count:
            gone.append(at)
            count -= len(parts)
            if count == 0:
                break
        else:
            rest = ",".join(parts[count:]).lstrip(" \t,")
            lines[at] = line[: colon + 1] + " " + rest
            break
    for at in reversed(gone):
        del lines[at]


def top_via_text(lines: list[str], seen: HeadLines) -> str:
    """The top Via's text, when its line is ``Via: <it>`` alone and stands where
    Message.replace_top_via rewrites it in place (the next line a Via, or the first
    header line and the only Via); else ""."""
    at = seen.via
    line = lines[at]
    if not line.startswith(VIA_LINE) or "," in line or '"' in line or "<" in line:
        return ""
    if at + 1 < len(lines) and lines[at + 1][:1] in WS:
        return ""  # folded
    if seen.second_via != at + 1 and not (at == 1 and seen.vias == 1):
        return ""
    return line[len(VIA_LINE) :].strip(WS)


def hop_count(line: str) -> int:
    """Max-Forwards, as Message.max_forwards reads it; -1 when it would refuse it."""
    known = HOP_COUNTS.table.get(line)
    if known is not None:
        return known
    value = line[line.find(":") + 1 :].strip(WS)
    if not (value.isdigit() and value.isascii() and len(value) <= MAX_LENGTH_DIGITS):
        return -1
    count = int(value)
    return HOP_COUNTS.put(line, count) if count <= MAX_HOPS_VALUE else -1


def name_key(line: str) -> str:
    """The key of a header ``line``'s name (before its first ':'), as the parser gives
    it; "" for a name it has not met (its memo's). A common name as it is usually
    spelled (COMMON_NAMES) is read from the line in place; the rest is looked up, as
    the parser looks it up."""
    size: i64 = len(line)
    colon: i64 = 0
    while colon < size and colon <= MAX_COMMON_NAME:  # a short scan costs less than find
        if ord(line[colon]) == COLON:
            break
        colon += 1
    if colon > MAX_COMMON_NAME or colon == size:
        colon = line.find(":")
    if colon > 0:  # the slot's arithmetic written out: a call per line cost a tenth
        slot = (colon * 7 + ord(line[0]) * 112 + ord(line[colon - 1])) & NAME_SLOTS
        name = _NAMES[slot]
        if len(name) == colon and line.startswith(name):
            return _NAME_KEYS[slot]
        return HEADER_KEYS.table.get(line[:colon], "")
    return HEADER_KEYS.table.get(line if colon < 0 else "", "")


class HeadLines:
    """The header lines from ``lines[first]`` on: where those a plain forward reads are
    (indexes into the head's lines), whether every name is one the parser has met (its
    memo: a name it has not is left to it, which checks it) with one Content-Length
    matching the body, at most one Max-Forwards and one Call-ID, no credentials (the edge
    guard's lockouts read them), no Route unless ``routed`` (then at most one From and
    one To): ``known``; and whether a request has what a plain forward needs besides (a
    Via, Max-Forwards, Call-ID; routed, a Route, From and To): ``usual``. Routed, the
    CSeq and Expires lines are noted too (the proxy's ACK reads them; the LB does not).

    ``creating`` (a dialog-creating request with no Route, for the LB): From and To are
    read as when routed (at most one each, both needed for ``usual``), and the Contact
    lines and how many Record-Route and Path lines there are noted too.
    ``registering`` (a REGISTER, for the LB): as ``creating``, and credentials are
    noted (``credentials``, in the order of the lines) instead of declined."""

    __slots__ = (
        "agent",
        "call_id",
        "contacts",
        "credentials",
        "cseq",
        "expires",
        "from_",
        "known",
        "last_via",
        "max_forwards",
        "paths",
        "record_routes",
        "routes",
        "second_via",
        "to",
        "usual",
        "via",
        "vias",
    )

    def __init__(
        self,
        lines: list[str],
        body_length: int,
        first: int = 1,
        routed: bool = False,
        creating: bool = False,
        registering: bool = False,
    ) -> None:
        creating = creating or registering
        self.via = self.max_forwards = self.call_id = 0
        self.agent = 0  # the first User-Agent line; 0: none
        self.vias = 0  # Via lines
        self.second_via = 0  # the second Via line
        self.last_via = 0  # the last Via line
        self.from_ = self.to = 0  # read when routed
        self.cseq = 0  # routed: the CSeq line; -1: more than one
        self.expires = 0  # routed: the first Expires line
        # the Route lines when routed, the Contact lines when routed or creating (else
        # one shared empty list, never added to: two lists fewer per message)
        self.routes: list[int] = [] if routed else NO_LINES
        self.contacts: list[int] = [] if routed or creating else NO_LINES
        self.record_routes = 0  # Record-Route lines, when routed or creating
        self.paths = 0  # Path lines, likewise
        # the credentials' lines when registering (else never added to)
        self.credentials: list[int] = [] if registering else NO_LINES
        self.known = self._read(lines, body_length, first, routed, routed or creating, registering)
        usual = self.known and bool(self.via and self.max_forwards and self.call_id)
        if routed:
            usual = usual and bool(self.routes and self.from_ and self.to)
        elif creating:
            usual = usual and bool(self.from_ and self.to)
        self.usual = usual

    def _read(
        self,
        lines: list[str],
        body_length: int,
        first: int,
        routed: bool,
        dialog: bool,
        registering: bool,
    ) -> bool:
        length = 0
        for at in range(first, len(lines)):
            line = lines[at]
            key = name_key(line)
            if not key:
                return False
            if key == "via":
                self.vias += 1
                self.last_via = at
                if not self.via:
                    self.via = at
                elif not self.second_via:
                    self.second_via = at
            elif key == "max-forwards":
                if self.max_forwards:
                    return False
                self.max_forwards = at
            elif key == "call-id":
                if self.call_id:
                    return False
                self.call_id = at
            elif key == "content-length":
                if length:
                    return False
                length = at
            elif key == "user-agent":
                if not self.agent:
                    self.agent = at
            elif key == "route":
                if not routed:
                    return False
                self.routes.append(at)
            elif key in CREDENTIALS:
                if not registering:
                    return False
                self.credentials.append(at)
            elif dialog and not self._single(key, at):
                return False
        return bool(length) and length_is(lines[length], body_length)

    def _single(self, key: str, at: int) -> bool:
        """A From or To line at ``at`` noted; False when it is a second one (other
        lines: True, the CSeq, Expires, Contact and Record-Route lines noted)."""
        if key == "from":
            if self.from_:
                return False
            self.from_ = at
        elif key == "to":
            if self.to:
                return False
            self.to = at
        elif key == "cseq":
            self.cseq = -1 if self.cseq else at
        elif key == "expires":
            if not self.expires:
                self.expires = at
        elif key == "contact":
            self.contacts.append(at)
        elif key == "record-route":
            self.record_routes += 1
        elif key == "path":
            self.paths += 1
        return True


# -- the edits of a stateless hop ---------------------------------------------------------
def push_our_via(
    lines: list[str], seen: HeadLines, ours: str, stamped: str | None, hops: int
) -> None:
    """Our Via ``ours`` on top of the client's (``stamped``: that Via rewritten, as
    ``StatelessForwarder.stamped`` gives it; None: as it is), as replace_top_via and
    push_via put them (the top Via where ``top_via_text`` found it), and Max-Forwards
    ``hops`` - 1 in place, as decrement_max_forwards writes it."""
    at = seen.via
    # f-strings: one new string each, where chained '+' makes one per '+'
    if stamped is None:
        lines[at] = f"{VIA_LINE}{ours}\r\n{lines[at]}"
    else:
        lines[at] = f"{VIA_LINE}{ours}\r\n{VIA_LINE}{stamped}"
    lines[seen.max_forwards] = MAX_FORWARDS_LINES[hops - 1]


def joined(lines: list[str], data: bytes, head_end: int) -> bytes:
    """The head's ``lines`` (start line first) and the body of ``data`` as received
    (after ``head_end``, where the blank line starts): what Message.serialize gives."""
    lines.append("\r\n")  # the blank line joined with the rest: no second copy of the head
    forwarded = "\r\n".join(lines).encode("latin-1")
    lines.pop()
    if head_end + 4 < len(data):
        forwarded += data[head_end + 4 :]
    return forwarded
