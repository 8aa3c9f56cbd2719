"""The private channels between the workers of a stateful role, and the steering that
uses them (the shell of ``transport/steering.py``).

    inboxes = make_inboxes(workers)                  # in the supervisor, before forking
    steering = WorkerSteering.in_worker(index, inboxes, ids_per_worker)   # in a worker
    endpoint.steering = steering                     # and steering.backlog() to its overload
    steering.start(endpoint)                         # within the worker's running loop

Each worker has an inbox: an ``AF_UNIX`` datagram socketpair the supervisor makes before
forking. The worker reads one end; every other worker writes to the other. The pair has
no name in any file system or network, so only our own processes hold it: nothing from
outside can write to an inbox, and nothing read from one needs checking beyond its form.
The supervisor keeps both ends open, so a restarted worker finds its inbox again, with
whatever was handed to it meanwhile. A socketpair end is not held to the receiver's
``net.unix.max_dgram_qlen`` (10 here) but to the writer's send buffer, asked to be large.

The endpoint asks ``elsewhere`` for every message it receives (true: handed to its
owner, not to be handled here) and ``sent_elsewhere`` for every send to a TCP connection
(a connection lives in the worker that holds it: another worker's is written by that one).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import socket
import sys
import termios
from typing import Protocol

from sipfleet.transport import steering
from sipfleet.transport.base import Destination, MessageTooLarge, Peer, TransportError
from sipfleet.transport.steering import BadHandoff, Received, Send

log = logging.getLogger(__name__)

INBOX_BUFFER = 4 << 20  # bytes handed over and not yet read (the kernel caps it at wmem_max)
MAX_HANDOFF = 1 << 17  # a message of up to sip.max_message_size, and its peer
DRAIN_BATCH = 32  # handoffs read per wakeup: fewer wakeups, the sockets still get turns


class Inbox(Protocol):
    """What the steering needs of the endpoint it serves."""

    def frame_received(self, data: bytes, peer: Peer) -> None: ...

    def send_bytes(self, data: bytes, destination: Destination) -> None: ...


Pair = tuple[socket.socket, socket.socket]  # (written by the others, read by its worker)


def make_inboxes(workers: int) -> list[Pair]:
    pairs = []
    for _ in range(workers):
        writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock in (writer, reader):
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, INBOX_BUFFER)
        pairs.append((writer, reader))
    return pairs


class WorkerSteering:
    def __init__(
        self,
        index: int,
        inbox: socket.socket,
        outboxes: dict[int, socket.socket],
        ids_per_worker: int,
        *,
        own_writer: socket.socket | None = None,
    ) -> None:
        """``inbox``: where this worker reads; ``outboxes``: every other worker's inbox
        by index; ``ids_per_worker``: TCP connection ids of worker n start at n times it;
        ``own_writer``: the other end of ``inbox`` (for ``backlog``)."""
        self.index = index
        self.workers = len(outboxes) + 1
        self._inbox = inbox
        self._outboxes = outboxes
        self._ids_per_worker = ids_per_worker
        self._endpoint: Inbox | None = None
        self._own_writer = own_writer
        # A handed message is being handled: it is ours, do not steer it again (what
        # handling it sends is steered as usual: the connection may be a third's).
        self._delivering = False
        self.handed = 0
        self.taken = 0
        self.dropped = 0  # an inbox full: lost as the network loses a datagram
        self.kept = 0  # could not be handed (too large): handled here instead

    @classmethod
    def in_worker(cls, index: int, inboxes: list[Pair], ids_per_worker: int) -> WorkerSteering:
        """Keep the ends worker ``index`` uses, close the others (in the worker only: the
        supervisor keeps every end for restarts)."""
        outboxes = {}
        for at, (writer, reader) in enumerate(inboxes):
            if at != index:
                reader.close()
                outboxes[at] = writer
        writer, reader = inboxes[index]  # its writer is not written here, but measured
        return cls(index, reader, outboxes, ids_per_worker, own_writer=writer)

    def start(self, endpoint: Inbox) -> None:
        self._endpoint = endpoint
        asyncio.get_running_loop().add_reader(self._inbox.fileno(), self._drain)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(self._inbox.fileno())
        self._endpoint = None
        log.log(
            logging.WARNING if self.dropped else logging.INFO,
            "worker %d: %d messages handed to other workers, %d taken from them, "
            "%d lost to a full inbox, %d kept",
            self.index,
            self.handed,
            self.taken,
            self.dropped,
            self.kept,
        )

    # -- the endpoint's hooks ---------------------------------------------------------------
    def elsewhere(self, data: bytes, peer: Peer) -> bool:
        """True when another worker owns ``data`` and it went there (or was lost on the
        way, as a datagram may be)."""
        if self._delivering:
            return False
        owner = steering.owner_of(data, self.workers)
        if owner is None or owner == self.index:
            return False
        try:
            self._hand(owner, steering.encode(Received(data, peer)))
        except BlockingIOError:
            self.dropped += 1
        except (OSError, BadHandoff) as exc:
            self.kept += 1  # better here than lost: a worker that does not hold its
            log.debug("handoff to worker %d failed: %s", owner, exc)  # transaction answers
            return False
        return True

    def sent_elsewhere(self, data: bytes, destination: Destination) -> bool:
        """True when ``destination``'s TCP connection belongs to another worker and the
        bytes went to it; raises TransportError when they could not."""
        connection = destination.connection_id
        if connection is None or destination.transport != "tcp":
            return False
        owner = connection // self._ids_per_worker
        if owner == self.index or owner not in self._outboxes:
            return False
        try:
            self._hand(owner, steering.encode(Send(data, destination)))
        except OSError as exc:
            raise _send_error(exc, owner) from exc
        except BadHandoff as exc:
            raise TransportError(f"connection {connection} of worker {owner}: {exc}") from exc
        return True

    def backlog(self) -> int:
        """Bytes (kernel accounting) handed to this worker and not yet read: part of its
        overload, as what waits in its own UDP sockets is. The inbox's writing end is
        shared by every worker, so its output queue is all that waits."""
        writer = self._own_writer
        if writer is None:
            return 0
        try:
            queued = fcntl.ioctl(writer.fileno(), termios.TIOCOUTQ, bytes(4))
        except OSError:
            return 0
        return int.from_bytes(queued, sys.byteorder, signed=True)

    def owns_call_id(self, call_id: str) -> bool:
        """Whether the answers to a request this worker makes up with ``call_id`` (a
        probe) come back to it."""
        return steering.owner_of_call_id(call_id.encode("latin-1"), self.workers) == self.index

    def _hand(self, owner: int, blob: bytes) -> None:
        self._outboxes[owner].send(blob)
        self.handed += 1

    # -- the inbox ----------------------------------------------------------------------------
    def _drain(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                blob = self._inbox.recv(MAX_HANDOFF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("worker %d inbox: %s", self.index, exc)
                return
            self._take(blob)

    def _take(self, blob: bytes) -> None:
        endpoint = self._endpoint
        try:
            message = steering.decode(blob)
        except BadHandoff as exc:
            log.warning("worker %d: bad handoff: %s", self.index, exc)
            return
        if endpoint is None:
            return
        self.taken += 1
        self._delivering = True
        try:
            if isinstance(message, Received):  # as if it had come in here
                endpoint.frame_received(message.data, message.peer)
            else:
                endpoint.send_bytes(message.data, message.destination)
        except TransportError as exc:  # the endpoint has counted it
            log.debug("worker %d: handed message not sent: %s", self.index, exc)
        except Exception:
            log.exception("worker %d: handoff not handled", self.index)
        finally:
            self._delivering = False

    def counters(self) -> dict[str, int]:
        return {
            "handoffs_sent": self.handed,
            "handoffs_received": self.taken,
            "handoffs_dropped": self.dropped,
            "handoffs_kept": self.kept,
        }


def _send_error(exc: OSError, owner: int) -> TransportError:
    if isinstance(exc, BlockingIOError):
        return TransportError(f"worker {owner}'s inbox is full")
    if exc.errno == errno.EMSGSIZE:
        return MessageTooLarge(f"too large to hand to worker {owner}: {exc}")
    return TransportError(f"handoff to worker {owner}: {exc}")
