"""Client transactions: RFC 3261 §17.1 with RFC 6026's Accepted state for INVITE."""

from __future__ import annotations

from typing import Any

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
        actions: list[Action] = [Send(self, self.request)]
        if not self.reliable:
            actions.append(StartTimer(self, Timer.A, self._interval))
        actions.append(StartTimer(self, Timer.B, self.timers.timeout))
        return actions

    def receive(self, response: Response) -> list[Action]:
        state = self.state
        status = response.status
        if state is State.CALLING or state is State.PROCEEDING:
            actions: list[Action] = []
            if state is State.CALLING:  # Timer B runs in Calling only; Timer C is the TU's
                self._cancel_calling(actions)
            if status < 200:
                self.state = State.PROCEEDING
                actions.append(Deliver(self, response))
            elif status < 300:
                self.state = State.ACCEPTED
                actions.append(Deliver(self, response))
                actions.append(StartTimer(self, Timer.M, self.timers.timeout))
            else:
                self._complete(response, actions)
            return actions
        if state is State.COMPLETED:
            if status >= 300:  # the final response again: our ACK was lost
                assert self._last is not None
                return [Send(self, self._last)]
            # A 2xx after a failure (a downstream fork) is outside §17.1.1; proxies must
            # forward every 2xx (§16.7 step 5), so the TU gets it.
            return [Deliver(self, response)] if status >= 200 else []
        if state is State.ACCEPTED and 200 <= status < 300:
            return [Deliver(self, response)]
        return []

    def abandon(self) -> list[Action]:
        """§9.1: the request was cancelled and no final response came in 64*T1: the TU
        considers it over. Ends a transaction still in Proceeding (no timer runs there);
        any other state ends by its own timers, and this does nothing."""
        if self.state is not State.PROCEEDING:
            return []
        return self._terminate([])

    def _cancel_calling(self, actions: list[Action]) -> None:
        if self.reliable:
            self._cancel(actions, Timer.B)
        else:
            self._cancel(actions, Timer.A, Timer.B)

    def _complete(self, response: Response, actions: list[Action]) -> None:
        """3xx-6xx: ACK it (§17.1.1.3), tell the TU, absorb retransmissions for Timer D."""
        ack = self._last = make_ack_for_failure(self.request, response)
        actions.append(Send(self, ack))
        actions.append(Deliver(self, response))
        if self.reliable:
            self._terminate(actions)
        else:
            self.state = State.COMPLETED
            actions.append(StartTimer(self, Timer.D, self.timers.d))

    def timer_fired(self, timer: Timer) -> list[Action]:
        state = self.state
        if state is State.CALLING:
            if timer == Timer.A and not self.reliable:
                self._interval *= 2  # INVITE retransmissions double without a cap
                return [Send(self, self.request), StartTimer(self, Timer.A, self._interval)]
            if timer == Timer.B:
                actions: list[Action] = []
                if not self.reliable:
                    self._cancel(actions, Timer.A)
                actions.append(Timeout(self, Timer.B))
                return self._terminate(actions)
        elif (state is State.COMPLETED and timer == Timer.D) or (
            state is State.ACCEPTED and timer == Timer.M
        ):
            return self._terminate([])
        return []

    def transport_failed(self) -> list[Action]:
        state = self.state
        actions: list[Action] = []
        if state is State.CALLING:
            self._cancel_calling(actions)
        elif state is State.COMPLETED:
            self._cancel(actions, Timer.D)
        elif state is not State.PROCEEDING:
            return []  # nothing is sent in Accepted
        actions.append(TransportError(self))
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
        actions: list[Action] = [Send(self, self.request)]
        if not self.reliable:
            actions.append(StartTimer(self, Timer.E, self._interval))
        actions.append(StartTimer(self, Timer.F, self.timers.timeout))
        return actions

    def receive(self, response: Response) -> list[Action]:
        state = self.state
        if state is not State.TRYING and state is not State.PROCEEDING:
            return []  # Completed absorbs retransmissions of the final response
        if response.status < 200:
            self.state = State.PROCEEDING
            return [Deliver(self, response)]
        actions: list[Action] = []
        self._cancel_running(actions)
        actions.append(Deliver(self, response))
        if self.reliable:
            return self._terminate(actions)
        self.state = State.COMPLETED
        actions.append(StartTimer(self, Timer.K, self.timers.t4))
        return actions

    def _cancel_running(self, actions: list[Action]) -> None:
        if self.reliable:
            self._cancel(actions, Timer.F)
        else:
            self._cancel(actions, Timer.E, Timer.F)

    def timer_fired(self, timer: Timer) -> list[Action]:
        state = self.state
        if state is State.TRYING or state is State.PROCEEDING:
            if timer == Timer.E and not self.reliable:
                if state is State.TRYING:
                    self._interval = min(2 * self._interval, self.timers.t2)
                else:
                    self._interval = self.timers.t2
                return [Send(self, self.request), StartTimer(self, Timer.E, self._interval)]
            if timer == Timer.F:
                actions: list[Action] = []
                if not self.reliable:
                    self._cancel(actions, Timer.E)
                actions.append(Timeout(self, Timer.F))
                return self._terminate(actions)
        elif state is State.COMPLETED and timer == Timer.K:
            return self._terminate([])
        return []

    def transport_failed(self) -> list[Action]:
        state = self.state
        if state is not State.TRYING and state is not State.PROCEEDING:
            return []  # nothing is sent in Completed
        actions: list[Action] = []
        self._cancel_running(actions)
        actions.append(TransportError(self))
        return self._terminate(actions)
