"""RFC 3261 §17 transactions with RFC 6026's Accepted state, sans-IO.

Events go in as method calls (``receive``, ``respond``, ``timer_fired``,
``transport_failed``); actions come out as lists of small values (``Send``,
``StartTimer``, ``CancelTimer``, ``Deliver``, ``Timeout``, ``TransportError``,
``Terminated``). See docs/transactions.md.
"""

from sipfleet.sip.transaction.actions import (
    Action,
    CancelTimer,
    Deliver,
    Send,
    StartTimer,
    State,
    Terminated,
    Timeout,
    TransportError,
)
from sipfleet.sip.transaction.base import Key, Transaction
from sipfleet.sip.transaction.client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
)
from sipfleet.sip.transaction.layer import TransactionLayer
from sipfleet.sip.transaction.matching import request_key, response_key
from sipfleet.sip.transaction.server import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
)
from sipfleet.sip.transaction.timers import DEFAULT_TIMERS, Timer, Timers, is_reliable

__all__ = [
    "DEFAULT_TIMERS",
    "Action",
    "CancelTimer",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "Deliver",
    "Key",
    "Send",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "StartTimer",
    "State",
    "Terminated",
    "Timeout",
    "Timer",
    "Timers",
    "Transaction",
    "TransactionLayer",
    "TransportError",
    "is_reliable",
    "request_key",
    "response_key",
]
