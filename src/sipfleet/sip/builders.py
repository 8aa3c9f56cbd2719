"""Messages built from other messages: responses (§8.2.6), CANCEL (§9.1), ACK for a
non-2xx final response (§17.1.1.3), and the branch of a stateless proxy (§16.11).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

from sipfleet.sip.address import parse_address
from sipfleet.sip.errors import ParseError
from sipfleet.sip.headers import header_key
from sipfleet.sip.memo import Memo
from sipfleet.sip.message import (
    Message,
    Request,
    Response,
    header_line,
    header_value,
    index_of,
)
from sipfleet.sip.via import BRANCH_COOKIE, Via, has_plain_params, is_rfc3261_branch

REASONS: Final = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

# Copied from the request into every response (§8.2.6.2); sets: copied_lines asks each line.
COPIED_IN_RESPONSES: Final = frozenset({"via", "from", "to", "call-id", "cseq"})
_COPIED_IN_100: Final = COPIED_IN_RESPONSES | {"timestamp"}  # §8.2.6.1


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return BRANCH_COOKIE + secrets.token_hex(8)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"


def make_response(
    request: Message,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request`` (§8.2.6).

    Works from the raw header lines, so a request whose headers do not parse can still be
    answered. ``to_tag`` is added when the To has no tag yet (never on 100, §8.2.6.2).
    """
    lines, keys = copied_lines(request, _COPIED_IN_100 if status == 100 else COPIED_IN_RESPONSES)
    at = index_of(keys, "to")
    if to_tag is not None and status != 100 and at >= 0:
        value = header_value(lines[at])
        if not _has_tag(value):
            lines[at] = header_line("to", f"{value};tag={to_tag}")
    for name, value in headers or ():
        key = header_key(name)
        keys.append(key)
        lines.append(header_line(key, value))
    keys.append("content-length")
    lines.append(header_line("content-length", str(len(body))))
    return Response(status, reason or REASONS.get(status, "Unknown"), lines, keys, body)


def _has_tag(to_value: str) -> bool:
    if ";tag=" not in to_value.replace(" ", "").lower():
        return False
    try:  # ";tag=" may sit in a quoted display name; a To that does not parse keeps its text
        return parse_address(to_value, "To").tag is not None
    except ParseError:
        return True


def stateless_branch(request: Request, salt: str = "") -> str:
    """§16.11: the same branch for every retransmission of a request (and for the CANCEL
    or non-2xx ACK of an INVITE, which share its top Via branch), a different one for
    anything else. ``salt`` separates forwards of one request to different targets.

    An RFC 3261 branch is unique to its transaction already (§8.1.1.7), so it is carried:
    behind a tag that stands for its sender (the Via's sent-by) and the salt, which keeps
    apart two senders that happen to choose the same branch. One hash per sender and
    target, not per request. Other requests get a hash of what identifies them.
    """
    via = request.top_via
    carried = carried_branch(via, salt)
    if carried is not None:
        return carried
    branch = via.branch
    if branch is not None and is_rfc3261_branch(branch):
        key = f"{branch}\x00{via.host}\x00{via.port}\x00{salt}"
    else:  # RFC 2543 peers: hash what identifies the transaction
        key = "\x00".join(
            (
                request.uri_text,
                request.from_.tag or "",
                request.to.tag or "",
                request.call_id,
                str(request.cseq.seq),
                str(via),
                salt,
            )
        )
    return _STATELESS_PREFIX + _blake2b(key.encode("latin-1"), digest_size=10).hexdigest()


def carried_branch(via: Via, salt: str = "") -> str | None:
    """``stateless_branch`` for a request whose top Via is ``via``, when that carries the
    Via's own branch (RFC 3261, short and plainly written: our own Via then holds it as
    it is); None when the branch is to be hashed from the request."""
    branch = via.branch
    if branch is None or not is_rfc3261_branch(branch):
        return None
    if len(branch) > MAX_CARRIED_BRANCH or not has_plain_params(via):
        return None
    tag = _sender_tag(via.host, via.port, salt)
    return f"{_STATELESS_PREFIX}{tag}.{branch[len(BRANCH_COOKIE) :]}"


def _sender_tag(host: str, port: int | None, salt: str) -> str:
    key = (host, port, salt)
    tag = _SENDER_TAGS.table.get(key)
    if tag is None:
        text = f"{host}\x00{port}\x00{salt}".encode("latin-1")
        tag = _SENDER_TAGS.put(key, _blake2b(text, digest_size=6).hexdigest())
    return tag


_STATELESS_PREFIX: Final = f"{BRANCH_COOKIE}-sf"
MAX_CARRIED_BRANCH: Final = 64  # longer ones are hashed: our Via stays short
MAX_SENDER_TAGS: Final = 16384  # bounded (sip/memo.py): hosts come from packets
_SENDER_TAGS: Final = Memo[tuple[str, int | None, str], str](MAX_SENDER_TAGS)
_blake2b: Final = hashlib.blake2b  # a C static in the compiled build, not a globals lookup


def make_cancel(invite: Request) -> Request:
    """CANCEL for a request we sent (§9.1): same R-URI, Call-ID, From, To, CSeq number,
    Route set and top Via; nothing else."""
    return _derived("CANCEL", invite, copied_lines(invite, _COPIED_IN_CANCEL))


def make_ack_for_failure(invite: Request, response: Response) -> Request:
    """ACK for a 3xx-6xx answer to an INVITE we sent (§17.1.1.3): the To comes from the
    response (it carries the UAS tag), the rest from the INVITE."""
    lines, keys = copied_lines(invite, _COPIED_IN_ACK)
    to_lines, to_keys = copied_lines(response, TO_LINE)
    return _derived("ACK", invite, (lines + to_lines, keys + to_keys))


def _derived(method: str, invite: Request, copied: tuple[list[str], list[str]]) -> Request:
    """A request that shares the INVITE's transaction: its top Via, R-URI and CSeq number."""
    lines, keys = copied
    extra = [
        ("via", str(invite.top_via)),
        ("cseq", f"{invite.cseq.seq} {method}"),
        ("max-forwards", "70"),
        ("content-length", "0"),
    ]
    lines = [header_line("via", extra[0][1]), *lines]
    keys = ["via", *keys]
    for key, value in extra[1:]:
        keys.append(key)
        lines.append(header_line(key, value))
    return Request(method, invite.uri_text, lines, keys)


_COPIED_IN_CANCEL: Final = frozenset({"route", "from", "to", "call-id"})
_COPIED_IN_ACK: Final = frozenset({"route", "from", "call-id"})
TO_LINE: Final = frozenset({"to"})


def copied_lines(message: Message, wanted: frozenset[str]) -> tuple[list[str], list[str]]:
    """The lines of ``message`` whose header is in ``wanted``, in message order."""
    # An index loop: compiled, zip(strict=True) and the pairs it built went through
    # generic calls, and this runs for every response the proxy makes (the 100 of each
    # INVITE) and every CANCEL.
    all_lines, all_keys = message.lines, message.keys
    if len(all_lines) != len(all_keys):
        raise ValueError("lines and keys differ in length")
    lines: list[str] = []
    keys: list[str] = []
    for i in range(len(all_keys)):
        key = all_keys[i]
        if key in wanted:
            lines.append(all_lines[i])
            keys.append(key)
    return lines, keys
