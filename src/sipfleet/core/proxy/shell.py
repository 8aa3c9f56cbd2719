"""The asyncio shell of the transaction layer: sends, arms timers, tells the TU.

Every transaction's ``peer`` is a ``Destination``: where a client transaction sends its
request, and where a server transaction sends its responses (fixed when it is created).
A send that fails at once is fed back as ``transport_failed``. Timers of a second or
more fire in 100 ms slots (the RFC's long timers are waits, not deadlines to the ms).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

from sipfleet.core.endpoint import SipEndpoint
from sipfleet.sip.message import Message
from sipfleet.sip.transaction import (
    Action,
    CancelTimer,
    Deliver,
    Send,
    StartTimer,
    Terminated,
    Timeout,
    Timer,
    Transaction,
    TransportError,
)
from sipfleet.transport.base import MessageTooLarge
from sipfleet.transport.base import TransportError as SendFailed

log = logging.getLogger(__name__)
COARSE_FROM_S = 1.0  # timers this long or longer may fire up to one resolution late
COARSE_RESOLUTION_S = 0.1


class TransactionUser(Protocol):
    def delivered(self, transaction: Transaction, message: Message) -> None: ...

    def timed_out(self, transaction: Transaction, timer: Timer) -> None: ...

    def send_failed(self, transaction: Transaction, status: int = 503) -> None: ...

    def terminated(self, transaction: Transaction) -> None: ...


class TransactionShell:
    __slots__ = ("_endpoint", "_loop", "_slots", "_timers", "_tu")

    def __init__(self, endpoint: SipEndpoint, tu: TransactionUser) -> None:
        self._endpoint = endpoint
        self._tu = tu
        # each armed timer: its loop handle, or the coarse slot it waits in
        self._timers: dict[tuple[Transaction, Timer], asyncio.TimerHandle | int] = {}
        self._slots: dict[int, list[tuple[Transaction, Timer]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def armed(self) -> int:
        return len(self._timers)

    def execute(self, actions: list[Action], failed_status: int = 503) -> None:
        """``failed_status``: what a transport failure among ``actions`` counts as."""
        for action in actions:
            if isinstance(action, Send):
                self._send(action.transaction, action.message)
            elif isinstance(action, StartTimer):
                self._arm(action)
            elif isinstance(action, CancelTimer):
                armed = self._timers.pop((action.transaction, action.timer), None)
                if isinstance(armed, asyncio.TimerHandle):
                    armed.cancel()  # a coarse one is skipped when its slot comes
            elif isinstance(action, Deliver):
                self._tu.delivered(action.transaction, action.message)
            elif isinstance(action, Timeout):
                self._tu.timed_out(action.transaction, action.timer)
            elif isinstance(action, TransportError):
                self._tu.send_failed(action.transaction, failed_status)
            elif isinstance(action, Terminated):
                self._tu.terminated(action.transaction)  # late timers are ignored by it

    def _send(self, transaction: Transaction, message: Message) -> None:
        try:
            self._endpoint.send_bytes(message.serialize(), transaction.peer)
        except SendFailed as exc:
            log.debug("%r: send to %s failed: %s", transaction, transaction.peer, exc)
            # too large for a datagram once forwarded: 513 (RFC 3261 §21.5.11), not 503
            status = 513 if isinstance(exc, MessageTooLarge) else 503
            self.execute(transaction.transport_failed(), status)

    def _arm(self, action: StartTimer) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        key = (action.transaction, action.timer)
        if action.delay < COARSE_FROM_S:
            self._timers[key] = loop.call_later(action.delay, self._fire, key)
            return
        # Long timers (B, F, H, J, L, M, D, K: seconds) share one loop timer per slot:
        # a call arms several and most are cancelled or end a finished transaction.
        slot = math.ceil((loop.time() + action.delay) / COARSE_RESOLUTION_S)
        keys = self._slots.get(slot)
        if keys is None:
            keys = self._slots[slot] = []
            loop.call_at(slot * COARSE_RESOLUTION_S, self._fire_slot, slot)
        keys.append(key)
        self._timers[key] = slot

    def _fire_slot(self, slot: int) -> None:
        for key in self._slots.pop(slot, ()):
            if self._timers.get(key) == slot:  # still armed, and armed for this slot
                self._fire(key)

    def _fire(self, key: tuple[Transaction, Timer]) -> None:
        self._timers.pop(key, None)
        transaction, timer = key
        try:
            self.execute(transaction.timer_fired(timer))
        except Exception:
            log.exception("timer %s of %r failed", timer, transaction)

    def cancel_all(self) -> None:
        for armed in self._timers.values():
            if isinstance(armed, asyncio.TimerHandle):
                armed.cancel()
        self._timers.clear()
        self._slots.clear()
