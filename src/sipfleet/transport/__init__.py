"""The only code that touches sockets: UDP, TCP (framing, connection table), workers."""

from sipfleet.transport.base import (
    Destination,
    FrameSink,
    MessageTooLarge,
    Peer,
    Transport,
    TransportError,
    TransportLimits,
    TransportName,
)
from sipfleet.transport.loop import install_event_loop, run
from sipfleet.transport.sockets import bind_all, bind_for_workers, keep_only

__all__ = [
    "Destination",
    "FrameSink",
    "MessageTooLarge",
    "Peer",
    "Transport",
    "TransportError",
    "TransportLimits",
    "TransportName",
    "bind_all",
    "bind_for_workers",
    "install_event_loop",
    "keep_only",
    "run",
]
