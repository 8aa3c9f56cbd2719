"""Branch values for forwarded requests, with the loop-detection part of §16.6 step 8.

Our branch is ``z9hG4bK<unique>.<loop>``. The unique part (a per-process random prefix
and a counter) makes every branch new across space and time (§8.1.1.7). The loop part is
a hash of the fields that decide how a request is routed; when a request comes back
carrying one of our Vias, §16.3 step 4 recomputes it: the same value means nothing that
matters changed, so the request has looped (482); a different one is a spiral.

RFC 3261 lists the top Via among the hashed fields, but a request that comes back has a
different top Via (the last hop's), so it would never be recognised: it is left out.
What is hashed: the Request-URI as received, the From and To tags, Call-ID, the CSeq
number, and the Route, Proxy-Require and Proxy-Authorization values.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

from sipfleet.core.proxy.addresses import OwnAddresses
from sipfleet.sip.message import Request, index_of
from sipfleet.sip.via import BRANCH_COOKIE

_LOOP_HEADERS = ("route", "proxy-require", "proxy-authorization")
_blake2b: Final = hashlib.blake2b  # a C static in the compiled build, not a globals lookup


def loop_hash(request: Request) -> str:
    """The loop-detection part of the branch for this request, as received."""
    parts = [
        request.uri_text,
        request.from_.tag or "",
        request.to.tag or "",
        request.call_id,
        str(request.cseq.seq),
    ]
    keys = request.keys
    for name in _LOOP_HEADERS:
        if index_of(keys, name) >= 0:  # compiled: cheaper than 'in', a generic call here
            parts.extend(request.header_lines(name))
    data = "\x00".join(parts).encode("latin-1", "replace")
    return _blake2b(data, digest_size=8).hexdigest()


class BranchMaker:
    """Unique branch values for one process."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = BRANCH_COOKIE + "sp" + secrets.token_hex(4)
        self._counter = 0  # an int, not itertools.count: next() is a generic call compiled

    def make(self, loop: str) -> str:
        self._counter += 1
        # hex()[2:] is f"{counter:x}" for a count from 1: a format spec is three generic
        # method calls in the compiled build, hex() one call
        return f"{self._prefix}{hex(self._counter)[2:]}.{loop}"


def loop_part(branch: str | None) -> str | None:
    """The loop part of one of our branches (None when it has none)."""
    if not branch or not branch.startswith(BRANCH_COOKIE):
        return None
    dot = branch.rfind(".")
    return branch[dot + 1 :] if dot != -1 else None


def has_looped(request: Request, own: OwnAddresses, loop: str | None = None) -> bool:
    """§16.3 step 4: a Via of ours whose loop part matches this request's hash.

    The hash is only computed when one of our Vias is there (a rare case)."""
    for via in request.vias:
        if own.sent(via):
            if loop is None:
                loop = loop_hash(request)
            if loop_part(via.branch) == loop:
                return True
    return False
