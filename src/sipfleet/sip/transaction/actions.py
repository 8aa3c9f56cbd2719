"""What a transaction asks of its shell and tells its TU: small values, made and read
once (nothing changes them after).

Not frozen dataclasses: a call makes about 25 of these, and a frozen dataclass is built by
a generated ``__init__`` that sets each field through ``object.__setattr__``, three times
the cost of a plain one (docs/benchmarks.md, "Instructions per call through LB, proxy and
MariaDB"). Every action names the transaction it comes from, so one executor can run the actions
of many transactions: send through the transport, arm or disarm a timer (and feed
``TimerFired`` back as ``transaction.timer_fired(timer)``), hand a message or a
failure to the TU, forget a terminated transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipfleet.sip.message import Message
    from sipfleet.sip.transaction.base import Transaction
    from sipfleet.sip.transaction.timers import Timer


class State(StrEnum):
    CALLING = "Calling"  # client INVITE: no response yet
    TRYING = "Trying"  # non-INVITE: no provisional response yet
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"  # server INVITE: ACK for the non-2xx received
    ACCEPTED = "Accepted"  # INVITE, RFC 6026: a 2xx went through
    TERMINATED = "Terminated"


@dataclass(slots=True)
class Send:
    """Pass ``message`` to the transport (the request, a retransmission, an ACK, or a
    response of a server transaction). Where to: ``transaction.peer``, or for
    responses the top Via (§18.2.2)."""

    transaction: Transaction
    message: Message


@dataclass(slots=True)
class StartTimer:
    """Arm ``timer`` to fire once after ``delay`` seconds, then call
    ``transaction.timer_fired(timer)``. A timer is never armed twice at once."""

    transaction: Transaction
    timer: Timer
    delay: float


@dataclass(slots=True)
class CancelTimer:
    """Disarm ``timer``. Optional for the shell: a late ``timer_fired`` is ignored."""

    transaction: Transaction
    timer: Timer


@dataclass(slots=True)
class Deliver:
    """For the TU: a response to a client transaction (1xx, the first final response,
    every 2xx in Accepted), or an ACK matched to a server INVITE in Accepted."""

    transaction: Transaction
    message: Message


@dataclass(slots=True)
class Timeout:
    """For the TU: Timer B or F (no final response: treat as 408) or H (no ACK)."""

    transaction: Transaction
    timer: Timer


@dataclass(slots=True)
class TransportError:
    """For the TU: the transport reported a failure sending for this transaction."""

    transaction: Transaction


@dataclass(slots=True)
class Terminated:
    """The transaction is over; it is already gone from its layer's table. Always the
    last action of its list."""

    transaction: Transaction


Action = Send | StartTimer | CancelTimer | Deliver | Timeout | TransportError | Terminated
