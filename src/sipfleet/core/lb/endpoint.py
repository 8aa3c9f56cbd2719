"""The LB's SipEndpoint: one more UDP socket per worker, private to it (the control
socket), and TCP connections of other workers reached through their control sockets.

The control socket is where the worker's health probes are answered (a probe answer
must come back to the worker that sent it, which the shared SO_REUSEPORT sockets do not
promise) and where the other workers hand over messages (core/lb/handoff.py).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import CONNECTION_IDS_PER_WORKER, SipEndpoint
from sipfleet.core.lb import handoff
from sipfleet.core.lb.fastpath import FastRelay
from sipfleet.transport.base import (
    Destination,
    MessageTooLarge,
    Peer,
    TransportError,
    TransportLimits,
)
from sipfleet.transport.tls import TlsCertificates

log = logging.getLogger(__name__)
# A static of the compiled module: handoff is interpreted, and handoff.MAGIC read for
# every datagram was an attribute lookup on it.
HANDOFF_MAGIC: Final = handoff.MAGIC


class LbEndpoint(SipEndpoint):
    def __init__(
        self,
        listen: Sequence[ListenAddress],
        *,
        sockets: Sequence[socket.socket],
        control: tuple[str, int],
        siblings: Mapping[int, tuple[str, int]],
        worker_index: int = 0,
        limits: TransportLimits | None = None,
        certificates: TlsCertificates | None = None,
    ) -> None:
        """``sockets``: the worker's listening sockets and, among them, its control socket
        bound at ``control``; ``siblings``: every worker's control address by index;
        ``certificates``: what its ``tls:`` listeners serve."""
        super().__init__(
            listen,
            sockets=sockets,
            worker_index=worker_index,
            limits=limits,
            certificates=certificates,
        )
        self.names_calls = False  # no Call-ID in the log context: docs/operations.md, Logs
        self.worker_index = worker_index
        self.control = control
        self.siblings = dict(siblings)
        self._sibling_at = {address: index for index, address in self.siblings.items()}
        # Learn and Answered go to the LB; Received and Send are the endpoint's own.
        self.on_handoff: Callable[[handoff.Handed, int], None] | None = None
        # The usual UDP responses and plain requests relayed from their bytes
        # (core/lb/fastpath.py); set by the Balancer, which knows what it must see itself.
        self.fast: FastRelay | None = None
        self.handoffs_sent = 0
        self.handoffs_received = 0
        self.handoffs_refused = 0
        self.handoffs_too_large = 0

    # The base class named rather than super(): these two run for every message, and a
    # super() lookup costs as much as the rest of the override.
    def frame_received(self, data: bytes, peer: Peer) -> None:
        if data.startswith(HANDOFF_MAGIC):
            self._handoff_received(data, peer)
        else:
            SipEndpoint.frame_received(self, data, peer)

    def _frame_received(self, data: bytes, peer: Peer) -> None:
        """The fast path first, for UDP (with no worker steering: the LB's workers are
        dealt datagrams by the kernel); what it declines goes the present way, parsed."""
        fast = self.fast
        if (
            fast is not None
            and peer.transport == "udp"
            and self.steering is None
            and fast.relay(data, peer)
        ):
            return
        SipEndpoint._frame_received(self, data, peer)

    def _handoff_received(self, data: bytes, peer: Peer) -> None:
        sender = self._sibling_at.get((peer.host, peer.port))
        arrived = (peer.local_host, peer.local_port) == self.control
        if sender is None or not arrived or peer.transport != "udp" or self.on_handoff is None:
            self.handoffs_refused += 1
            log.debug("handoff from %s:%s refused", peer.host, peer.port)
            return
        try:
            message = handoff.decode(data)
        except handoff.BadHandoff as exc:
            self.handoffs_refused += 1
            log.warning("bad handoff from worker %d: %s", sender, exc)
            return
        self.handoffs_received += 1
        if isinstance(message, handoff.Received):  # as if it had come in here
            super().frame_received(message.data, message.peer)
        elif isinstance(message, handoff.Send):
            self._send_handed(message)
        else:
            self.on_handoff(message, sender)

    def _send_handed(self, message: handoff.Send) -> None:
        destination = Destination(
            message.transport, message.host, message.port, message.connection_id
        )
        try:
            super().send_bytes(message.data, destination)
        except TransportError as exc:
            log.debug("handed send to connection %d failed: %s", message.connection_id, exc)

    def send_bytes(self, data: bytes, destination: Destination) -> None:
        """A TCP connection of another worker is written by that worker. Bytes too large
        to hand over raise MessageTooLarge (a forwarded request is answered 513)."""
        connection = destination.connection_id
        if destination.transport != "udp" and connection is not None:  # TCP or TLS
            owner = connection // CONNECTION_IDS_PER_WORKER
            if owner != self.worker_index:
                send = handoff.Send(
                    data, connection, destination.host, destination.port, destination.transport
                )
                try:
                    self._hand(owner, send)
                except MessageTooLarge:
                    self.handoffs_too_large += 1
                    raise
                except (TransportError, handoff.BadHandoff) as exc:
                    log.warning("handoff to worker %d failed: %s", owner, exc)
                    raise TransportError(f"connection {connection} of worker {owner}") from exc
                self.stats.messages_sent += 1
                return
        SipEndpoint.send_bytes(self, data, destination)

    def hand_over(self, worker: int, message: handoff.Handed) -> bool:
        """Send ``message`` to another worker; False when it cannot go: no such worker
        (logged), or too large for one datagram (input can make it so: counted)."""
        try:
            self._hand(worker, message)
        except MessageTooLarge as exc:
            self.handoffs_too_large += 1
            log.debug("handoff to worker %d failed: %s", worker, exc)
            return False
        except (TransportError, handoff.BadHandoff) as exc:
            log.warning("handoff to worker %d failed: %s", worker, exc)
            return False
        return True

    def _hand(self, worker: int, message: handoff.Handed) -> None:
        address = self.siblings.get(worker)
        if address is None:
            raise TransportError(f"no LB worker {worker}")
        destination = Destination("udp", address[0], address[1], None, self.control)
        super().send_bytes(handoff.encode(message), destination)
        self.handoffs_sent += 1

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "handoffs_sent": self.handoffs_sent,
            "handoffs_received": self.handoffs_received,
            "handoffs_refused": self.handoffs_refused,
            "handoffs_too_large": self.handoffs_too_large,
        }
