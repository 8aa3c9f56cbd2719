"""The asyncio shell of the transaction layer: sends, arms timers, tells the TU.

Every transaction's ``peer`` is a ``Destination``: where a client transaction sends its
request, and where a server transaction sends its responses (fixed when it is created).
A send that fails at once is fed back as ``transport_failed``.
"""

from __future__ import annotations

import asyncio
import logging
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
from sipfleet.transport.base import TransportError as SendFailed

log = logging.getLogger(__name__)


class TransactionUser(Protocol):
    def delivered(self, transaction: Transaction, message: Message) -> None: ...

    def timed_out(self, transaction: Transaction, timer: Timer) -> None: ...

    def send_failed(self, transaction: Transaction) -> None: ...

    def terminated(self, transaction: Transaction) -> None: ...


class TransactionShell:
    __slots__ = ("_endpoint", "_loop", "_timers", "_tu")

    def __init__(self, endpoint: SipEndpoint, tu: TransactionUser) -> None:
        self._endpoint = endpoint
        self._tu = tu
        self._timers: dict[tuple[Transaction, Timer], asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def armed(self) -> int:
        return len(self._timers)

    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.transaction, action.message)
            elif isinstance(action, StartTimer):
                self._arm(action)
            elif isinstance(action, CancelTimer):
                handle = self._timers.pop((action.transaction, action.timer), None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(action, Deliver):
                self._tu.delivered(action.transaction, action.message)
            elif isinstance(action, Timeout):
                self._tu.timed_out(action.transaction, action.timer)
            elif isinstance(action, TransportError):
                self._tu.send_failed(action.transaction)
            elif isinstance(action, Terminated):
                self._tu.terminated(action.transaction)  # late timers are ignored by it

    def _send(self, transaction: Transaction, message: Message) -> None:
        try:
            self._endpoint.send_bytes(message.serialize(), transaction.peer)
        except SendFailed as exc:
            log.debug("%r: send to %s failed: %s", transaction, transaction.peer, exc)
            self.execute(transaction.transport_failed())

    def _arm(self, action: StartTimer) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        key = (action.transaction, action.timer)
        self._timers[key] = loop.call_later(action.delay, self._fire, key)

    def _fire(self, key: tuple[Transaction, Timer]) -> None:
        self._timers.pop(key, None)
        transaction, timer = key
        try:
            self.execute(transaction.timer_fired(timer))
        except Exception:
            log.exception("timer %s of %r failed", timer, transaction)

    def cancel_all(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
