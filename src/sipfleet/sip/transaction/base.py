"""What the four transaction state machines share."""

from __future__ import annotations

from typing import Any, ClassVar, Final

from sipfleet.sip.message import Message, Request
from sipfleet.sip.transaction.actions import Action, CancelTimer, State, Terminated
from sipfleet.sip.transaction.timers import DEFAULT_TIMERS, Timer, Timers, is_reliable

# Final aliases: C statics in the compiled build. The names they stand for live in
# interpreted modules (sip/transaction/actions.py, the enums), and each plain use of
# one is a lookup in this module's globals (and an attribute read, for a member).
_CANCEL_TIMER: Final = CancelTimer
_TERMINATED: Final = Terminated
_STATE_TERMINATED: Final = State.TERMINATED

Key = tuple[object, ...]


class Transaction:
    """A transaction: fed events through its methods, each returning the actions to run.

    ``peer`` is the caller's, for the shell: where a client transaction sends, the flow
    a server transaction answers on. The transaction never looks at it. A TU finds its
    own state by the transaction's ``key`` (no slot for it here: no back-pointers).
    """

    first_state: ClassVar[State] = State.TERMINATED

    __slots__ = (
        "_interval",
        "_last",
        "_table",
        "key",
        "peer",
        "reliable",
        "request",
        "state",
        "timers",
    )

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        timers: Timers = DEFAULT_TIMERS,
        peer: Any = None,
    ) -> None:
        self._check_method(request.method)
        self.request = request
        self.reliable = is_reliable(request.top_via.transport) if reliable is None else reliable
        self.timers = timers
        self.peer = peer
        self.state = self.first_state
        self.key: Key = ()
        self._interval = timers.t1  # the current A, E or G retransmission interval
        self._table: dict[Key, Any] | None = None  # the layer's table that holds us
        # What we sent besides the request: the ACK of a client INVITE, the latest
        # response of a server transaction. Resent when the peer retransmits.
        self._last: Message | None = None

    @classmethod
    def _check_method(cls, method: str) -> None:
        """Raise ValueError when this kind of transaction cannot carry ``method``."""

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def terminated(self) -> bool:
        return self.state is _STATE_TERMINATED

    def timer_fired(self, timer: Timer) -> list[Action]:
        """A timer armed by ``StartTimer`` fired. Late or unknown timers are ignored."""
        raise NotImplementedError

    def transport_failed(self) -> list[Action]:
        """The transport could not send a message of this transaction."""
        raise NotImplementedError

    def forget_request(self) -> None:
        """The TU is done with the request (a server transaction that answered finally):
        keep its method and URI alone. The transaction answers retransmissions from its
        response, and a kept transaction costs a fraction of what it did."""
        request = self.request
        self.request = Request(request.method, request.uri_text, [], [])

    # -- helpers for the state machines -------------------------------------------------
    def _cancel(self, actions: list[Action], *timers: Timer) -> None:
        for timer in timers:
            actions.append(_CANCEL_TIMER(self, timer))

    def _terminate(self, actions: list[Action]) -> list[Action]:
        self.state = _STATE_TERMINATED
        table = self._table
        if table is not None:
            if table.get(self.key) is self:
                del table[self.key]
            self._table = None
        actions.append(_TERMINATED(self))
        return actions

    def __repr__(self) -> str:
        branch = self.key[0] if self.key else None  # the top Via's, for RFC 3261 keys
        return f"<{type(self).__name__} {branch} {self.state}>"
