"""Client transactions: RFC 3261 §17.1 with RFC 6026's Accepted state for INVITE."""

from __future__ import annotations

from typing import Any, Final

from sipfleet.sip.builders import make_ack_for_failure
from sipfleet.sip.message import Request, Response
from sipfleet.sip.transaction.actions import (
    Action,
    Deliver,
    Send,
    StartTimer,
    State,
    Timeout,
    TransportError,
)
from sipfleet.sip.transaction.base import Transaction
from sipfleet.sip.transaction.timers import DEFAULT_TIMERS, Timer, Timers

# Final aliases: C statics in the compiled build. The names they stand for live in
# interpreted modules (sip/transaction/actions.py, the enums), and each plain use of
# one is a lookup in this module's globals (and an attribute read, for a member).
_SEND: Final = Send
_START_TIMER: Final = StartTimer
_DELIVER: Final = Deliver
_TIMEOUT: Final = Timeout
_TRANSPORT_ERROR: Final = TransportError
_STATE_ACCEPTED: Final = State.ACCEPTED
_STATE_CALLING: Final = State.CALLING
_STATE_COMPLETED: Final = State.COMPLETED
_STATE_PROCEEDING: Final = State.PROCEEDING
_STATE_TRYING: Final = State.TRYING
_TIMER_A: Final = Timer.A
_TIMER_B: Final = Timer.B
_TIMER_D: Final = Timer.D
_TIMER_E: Final = Timer.E
_TIMER_F: Final = Timer.F
_TIMER_K: Final = Timer.K
_TIMER_M: Final = Timer.M


class ClientTransaction(Transaction):
    """A request we send. ``start()`` once, then feed it the responses that match."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        timers: Timers = DEFAULT_TIMERS,
        peer: Any = None,
    ) -> None:
        if not request.top_via.is_rfc3261:
            raise ValueError("a client transaction needs an RFC 3261 branch in its top Via")
        super().__init__(request, reliable=reliable, timers=timers, peer=peer)

    def start(self) -> list[Action]:
        """Send the request and arm the timers."""
        raise NotImplementedError

    def receive(self, response: Response) -> list[Action]:
        """A response matched to this transaction (§17.1.3)."""
        raise NotImplementedError


class ClientInviteTransaction(ClientTransaction):
    """§17.1.1 and RFC 6026 §7.2: Calling → Proceeding → Completed (3xx-6xx, we ACK) or
    Accepted (2xx: passed up, as is every further 2xx, until Timer M)."""

    __slots__ = ()
    first_state = State.CALLING

    @classmethod
    def _check_method(cls, method: str) -> None:
        if method != "INVITE":
            raise ValueError(f"not an INVITE: {method}")

    @property
    def ack(self) -> Request | None:
        """Our ACK for a 3xx-6xx response, once there is one."""
        return self._last  # type: ignore[return-value]

    def start(self) -> list[Action]:
        actions: list[Action] = [_SEND(self, self.request)]
        if not self.reliable:
            actions.append(_START_TIMER(self, _TIMER_A, self._interval))
        actions.append(_START_TIMER(self, _TIMER_B, self.timers.timeout))
        return actions

    def receive(self, response: Response) -> list[Action]:
        state = self.state
        status = response.status
        if state is _STATE_CALLING or state is _STATE_PROCEEDING:
            actions: list[Action] = []
            if state is _STATE_CALLING:  # Timer B runs in Calling only; Timer C is the TU's
                self._cancel_calling(actions)
            if status < 200:
                self.state = _STATE_PROCEEDING
                actions.append(_DELIVER(self, response))
            elif status < 300:
                self.state = _STATE_ACCEPTED
                actions.append(_DELIVER(self, response))
                actions.append(_START_TIMER(self, _TIMER_M, self.timers.timeout))
            else:
                self._complete(response, actions)
            return actions
        if state is _STATE_COMPLETED:
            if status >= 300:  # the final response again: our ACK was lost
                assert self._last is not None
                return [_SEND(self, self._last)]
            # A 2xx after a failure (a downstream fork) is outside §17.1.1; proxies must
            # forward every 2xx (§16.7 step 5), so the TU gets it.
            return [_DELIVER(self, response)] if status >= 200 else []
        if state is _STATE_ACCEPTED and 200 <= status < 300:
            return [_DELIVER(self, response)]
        return []

    def abandon(self) -> list[Action]:
        """§9.1: the request was cancelled and no final response came in 64*T1: the TU
        considers it over. Ends a transaction still in Proceeding (no timer runs there);
        any other state ends by its own timers, and this does nothing."""
        if self.state is not _STATE_PROCEEDING:
            return []
        return self._terminate([])

    def _cancel_calling(self, actions: list[Action]) -> None:
        if self.reliable:
            self._cancel(actions, _TIMER_B)
        else:
            self._cancel(actions, _TIMER_A, _TIMER_B)

    def _complete(self, response: Response, actions: list[Action]) -> None:
        """3xx-6xx: ACK it (§17.1.1.3), tell the TU, absorb retransmissions for Timer D."""
        ack = self._last = make_ack_for_failure(self.request, response)
        actions.append(_SEND(self, ack))
        actions.append(_DELIVER(self, response))
        if self.reliable:
            self._terminate(actions)
        else:
            self.state = _STATE_COMPLETED
            actions.append(_START_TIMER(self, _TIMER_D, self.timers.d))

    def timer_fired(self, timer: Timer) -> list[Action]:
        state = self.state
        if state is _STATE_CALLING:
            if timer == _TIMER_A and not self.reliable:
                self._interval *= 2  # INVITE retransmissions double without a cap
                return [_SEND(self, self.request), _START_TIMER(self, _TIMER_A, self._interval)]
            if timer == _TIMER_B:
                actions: list[Action] = []
                if not self.reliable:
                    self._cancel(actions, _TIMER_A)
                actions.append(_TIMEOUT(self, _TIMER_B))
                return self._terminate(actions)
        elif (state is _STATE_COMPLETED and timer == _TIMER_D) or (
            state is _STATE_ACCEPTED and timer == _TIMER_M
        ):
            return self._terminate([])
        return []

    def transport_failed(self) -> list[Action]:
        state = self.state
        actions: list[Action] = []
        if state is _STATE_CALLING:
            self._cancel_calling(actions)
        elif state is _STATE_COMPLETED:
            self._cancel(actions, _TIMER_D)
        elif state is not _STATE_PROCEEDING:
            return []  # nothing is sent in Accepted
        actions.append(_TRANSPORT_ERROR(self))
        return self._terminate(actions)


class ClientNonInviteTransaction(ClientTransaction):
    """§17.1.2: Trying → Proceeding → Completed, Timer E retransmits (capped at T2),
    Timer F times out, Timer K absorbs response retransmissions."""

    __slots__ = ()
    first_state = State.TRYING

    @classmethod
    def _check_method(cls, method: str) -> None:
        if method in ("INVITE", "ACK"):
            raise ValueError(f"not a non-INVITE request: {method}")

    def start(self) -> list[Action]:
        actions: list[Action] = [_SEND(self, self.request)]
        if not self.reliable:
            actions.append(_START_TIMER(self, _TIMER_E, self._interval))
        actions.append(_START_TIMER(self, _TIMER_F, self.timers.timeout))
        return actions

    def receive(self, response: Response) -> list[Action]:
        state = self.state
        if state is not _STATE_TRYING and state is not _STATE_PROCEEDING:
            return []  # Completed absorbs retransmissions of the final response
        if response.status < 200:
            self.state = _STATE_PROCEEDING
            return [_DELIVER(self, response)]
        actions: list[Action] = []
        self._cancel_running(actions)
        actions.append(_DELIVER(self, response))
        if self.reliable:
            return self._terminate(actions)
        self.state = _STATE_COMPLETED
        actions.append(_START_TIMER(self, _TIMER_K, self.timers.t4))
        return actions

    def _cancel_running(self, actions: list[Action]) -> None:
        if self.reliable:
            self._cancel(actions, _TIMER_F)
        else:
            self._cancel(actions, _TIMER_E, _TIMER_F)

    def timer_fired(self, timer: Timer) -> list[Action]:
        state = self.state
        if state is _STATE_TRYING or state is _STATE_PROCEEDING:
            if timer == _TIMER_E and not self.reliable:
                if state is _STATE_TRYING:
                    self._interval = min(2 * self._interval, self.timers.t2)
                else:
                    self._interval = self.timers.t2
                return [_SEND(self, self.request), _START_TIMER(self, _TIMER_E, self._interval)]
            if timer == _TIMER_F:
                actions: list[Action] = []
                if not self.reliable:
                    self._cancel(actions, _TIMER_E)
                actions.append(_TIMEOUT(self, _TIMER_F))
                return self._terminate(actions)
        elif state is _STATE_COMPLETED and timer == _TIMER_K:
            return self._terminate([])
        return []

    def transport_failed(self) -> list[Action]:
        state = self.state
        if state is not _STATE_TRYING and state is not _STATE_PROCEEDING:
            return []  # nothing is sent in Completed
        actions: list[Action] = []
        self._cancel_running(actions)
        actions.append(_TRANSPORT_ERROR(self))
        return self._terminate(actions)
