"""Transaction keys: which transaction a message belongs to (§17.1.3, §17.2.3).

A key is a tuple, hashed once per message. RFC 3261 requests are keyed by their top
Via branch, sent-by and method (ACK counting as INVITE); requests from RFC 2543 peers,
whose branch lacks the magic cookie, by R-URI, To tag, From tag, Call-ID, CSeq and top
Via. Fields are compared as received (host in lower case): a retransmission repeats
them byte for byte.
"""

from __future__ import annotations

from sipfleet.sip.message import Request, Response
from sipfleet.sip.transaction.base import Key
from sipfleet.sip.via import BRANCH_COOKIE


def client_key(branch: str, method: str) -> Key:
    """§17.1.3: our branch and the request method, so a CANCEL is its own transaction."""
    return (branch, method)


def response_key(response: Response) -> Key | None:
    """The client transaction key a response names, or None without a branch."""
    branch = response.top_via.branch
    return None if branch is None else (branch, response.cseq.method)


def request_key(request: Request, method: str | None = None) -> Key:
    """The server transaction key of a request (§17.2.3). ``method`` overrides the
    request's, as when a CANCEL looks for the INVITE it cancels (§9.2)."""
    if method is None:
        method = request.method
    if method == "ACK":
        method = "INVITE"
    via = request.top_via
    branch = via.branch
    if branch is not None and branch.startswith(BRANCH_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    return rfc2543_key(request, method, request.to.tag)


def is_rfc3261_key(key: Key) -> bool:
    return len(key) == 4


def rfc2543_key(request: Request, method: str, to_tag: str | None) -> Key:
    """§17.2.3 for peers without the magic cookie. ``to_tag`` is the request's own,
    except for an ACK, which carries the tag of our response rather than the INVITE's."""
    via = request.top_via
    return (
        request.uri_text,
        to_tag,
        request.from_.tag,
        request.call_id,
        request.cseq.seq,
        method,
        via.transport,
        via.host.lower(),
        via.port,
        via.branch,
    )
