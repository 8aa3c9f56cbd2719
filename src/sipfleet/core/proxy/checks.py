"""Request validation of RFC 3261 §16.3, as a pure function.

Step 1 (syntax) and step 2 (URI scheme, 416) are ``sipfleet.sip.validate_request``,
which the engine runs first: it raises ParseError with the status to answer. What is
left needs the proxy's view: Max-Forwards (483), loops (482) and Proxy-Require (420).
Step 6 (Proxy-Authorization) is the routing policy's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipfleet.core.proxy.addresses import OwnAddresses
from sipfleet.core.proxy.branch import has_looped
from sipfleet.sip.message import Request, index_of

Header = tuple[str, str]

# Option tags this proxy implements for Proxy-Require; none today.
SUPPORTED_PROXY_EXTENSIONS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A final response the proxy answers with instead of forwarding."""

    status: int
    reason: str
    headers: tuple[Header, ...] = ()


TOO_MANY_HOPS = Rejection(483, "Too Many Hops")
LOOP_DETECTED = Rejection(482, "Loop Detected")


def check_request(request: Request, own: OwnAddresses, loop: str | None = None) -> Rejection | None:
    """§16.3 steps 3-5 for a request that passed ``validate_request``; None: go on.

    ``loop``: the request's loop hash when already computed."""
    if request.max_forwards == 0:
        return TOO_MANY_HOPS
    if has_looped(request, own, loop):
        return LOOP_DETECTED
    return check_proxy_require(request)


def check_proxy_require(request: Request) -> Rejection | None:
    """§16.3 step 5: 420 listing every option tag we do not support."""
    if index_of(request.keys, "proxy-require") < 0:  # compiled: cheaper than 'in'
        return None
    unsupported = [t for t in request.proxy_require if t not in SUPPORTED_PROXY_EXTENSIONS]
    if not unsupported:
        return None
    return Rejection(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
