"""Server transactions: RFC 3261 §17.2 with RFC 6026's Accepted state for INVITE.

The TU answers through ``respond``; the transaction absorbs request retransmissions
(answering them with the latest response) and, for INVITE over unreliable transports,
retransmits a 3xx-6xx final response until the ACK comes. Neither kind sends 100
(Trying) by itself: an INVITE's TU sends it (a proxy at once, §16.2), so the transaction
needs no 200 ms timer.
"""

from __future__ import annotations

from typing import Final

from sipfleet.sip.builders import TO_LINE, copied_lines
from sipfleet.sip.message import Request, Response
from sipfleet.sip.parser import parse_message
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
from sipfleet.sip.transaction.timers import Timer

# Final aliases: C statics in the compiled build. The names they stand for live in
# interpreted modules (sip/transaction/actions.py, the enums), and each plain use of
# one is a lookup in this module's globals (and an attribute read, for a member).
_SEND: Final = Send
_START_TIMER: Final = StartTimer
_DELIVER: Final = Deliver
_TIMEOUT: Final = Timeout
_TRANSPORT_ERROR: Final = TransportError
_STATE_ACCEPTED: Final = State.ACCEPTED
_STATE_COMPLETED: Final = State.COMPLETED
_STATE_CONFIRMED: Final = State.CONFIRMED
_STATE_PROCEEDING: Final = State.PROCEEDING
_STATE_TERMINATED: Final = State.TERMINATED
_STATE_TRYING: Final = State.TRYING
_TIMER_G: Final = Timer.G
_TIMER_H: Final = Timer.H
_TIMER_I: Final = Timer.I
_TIMER_J: Final = Timer.J
_TIMER_L: Final = Timer.L


class ServerTransaction(Transaction):
    """A request we received. The TU answers with ``respond``; feed it the requests that
    match (retransmissions, and the ACK for an INVITE)."""

    __slots__ = ()

    @property
    def last_response(self) -> Response | None:
        """The latest response sent: what a retransmitted request is answered with."""
        return self._last  # type: ignore[return-value]

    def respond(self, response: Response) -> list[Action]:
        """A response from the TU. Returns [] when the state discards it."""
        raise NotImplementedError

    def forget_request(self) -> None:
        """Also keep the final response as the bytes sent, no longer as header lines:
        all a retransmitted request needs (a kept answer costs about a kilobyte less)."""
        super().forget_request()
        last = self._last
        if isinstance(last, Response) and last.status >= 200 and last.lines:
            self._last = Response(last.status, last.reason, [], [], raw=last.serialize())

    def receive(self, request: Request) -> list[Action]:
        """A request matched to this transaction (§17.2.3)."""
        raise NotImplementedError


class ServerInviteTransaction(ServerTransaction):
    """§17.2.1 and RFC 6026 §7.1: Proceeding → Completed (3xx-6xx) → Confirmed (ACK), or
    Accepted (2xx): there the TU's 2xx retransmissions go out, INVITE retransmissions are
    absorbed and ACKs are passed to the TU, until Timer L."""

    __slots__ = ()
    first_state = State.PROCEEDING

    @classmethod
    def _check_method(cls, method: str) -> None:
        if method != "INVITE":
            raise ValueError(f"not an INVITE: {method}")

    def respond(self, response: Response) -> list[Action]:
        state = self.state
        status = response.status
        if state is _STATE_PROCEEDING:
            self._last = response
            if status < 200:
                return [_SEND(self, response)]
            if status < 300:
                self.state = _STATE_ACCEPTED
                return [_SEND(self, response), _START_TIMER(self, _TIMER_L, self.timers.timeout)]
            self.state = _STATE_COMPLETED
            actions: list[Action] = [_SEND(self, response)]
            if not self.reliable:
                actions.append(_START_TIMER(self, _TIMER_G, self._interval))
            actions.append(_START_TIMER(self, _TIMER_H, self.timers.timeout))
            return actions
        if 200 <= status < 300 and state is not _STATE_TERMINATED:
            # Accepted: the TU's 2xx retransmissions (RFC 6026). Completed or Confirmed:
            # a 2xx after a failure, which a proxy must still forward (§16.7 step 5).
            return [_SEND(self, response)]
        return []

    def forget_request(self) -> None:
        """Accepted (a 2xx sent), the transaction resends nothing: the TU retransmits its
        2xx (RFC 6026). Of that 2xx it keeps the To line alone, by which an RFC 2543 ACK
        is matched (``final_to_tag``): a kept call holds its answer (SDP and all, about
        600 bytes) no longer. Otherwise as every server transaction forgets."""
        last = self._last
        if self.state is not _STATE_ACCEPTED or not isinstance(last, Response) or not last.lines:
            super().forget_request()
            return
        Transaction.forget_request(self)
        lines, keys = copied_lines(last, TO_LINE)
        self._last = Response(last.status, last.reason, lines, keys)

    @property
    def final_to_tag(self) -> str | None:
        """The To tag of the final response sent, which an ACK must carry (§17.2.3)."""
        last = self._last
        if last is None or not isinstance(last, Response) or last.status < 200:
            return None
        if not last.lines:  # kept as bytes (``forget_request``): read them again
            last = parse_message(last.raw)
        return last.to.tag

    def receive(self, request: Request) -> list[Action]:
        state = self.state
        if request.method == "ACK":
            if state is _STATE_COMPLETED:
                return self._confirm()
            if state is _STATE_ACCEPTED:
                return [_DELIVER(self, request)]
            return []  # Confirmed absorbs ACK retransmissions
        last = self._last
        if last is not None and (state is _STATE_PROCEEDING or state is _STATE_COMPLETED):
            return [_SEND(self, last)]
        return []  # nothing sent yet, or Accepted: the INVITE is absorbed (RFC 6026)

    def _confirm(self) -> list[Action]:
        actions: list[Action] = []
        if self.reliable:
            self._cancel(actions, _TIMER_H)
            return self._terminate(actions)  # Timer I is zero
        self._cancel(actions, _TIMER_G, _TIMER_H)
        self.state = _STATE_CONFIRMED
        actions.append(_START_TIMER(self, _TIMER_I, self.timers.t4))
        return actions

    def timer_fired(self, timer: Timer) -> list[Action]:
        state = self.state
        if state is _STATE_COMPLETED:
            if timer == _TIMER_G and not self.reliable:
                assert self._last is not None
                self._interval = min(2 * self._interval, self.timers.t2)
                return [_SEND(self, self._last), _START_TIMER(self, _TIMER_G, self._interval)]
            if timer == _TIMER_H:  # no ACK came: the TU learns the transaction failed
                actions: list[Action] = []
                if not self.reliable:
                    self._cancel(actions, _TIMER_G)
                actions.append(_TIMEOUT(self, _TIMER_H))
                return self._terminate(actions)
        elif (state is _STATE_CONFIRMED and timer == _TIMER_I) or (
            state is _STATE_ACCEPTED and timer == _TIMER_L
        ):
            return self._terminate([])
        return []

    def transport_failed(self) -> list[Action]:
        # RFC 6026 Figure 7: in Proceeding, Completed and Accepted the TU is told and the
        # state stays; Timer H or L (or the TU's final response) still ends it.
        state = self.state
        if state is _STATE_PROCEEDING or state is _STATE_COMPLETED or state is _STATE_ACCEPTED:
            return [_TRANSPORT_ERROR(self)]
        return []


class ServerNonInviteTransaction(ServerTransaction):
    """§17.2.2: Trying → Proceeding (1xx) → Completed (final); retransmitted requests
    are answered with the latest response; Timer J ends Completed."""

    __slots__ = ()
    first_state = State.TRYING

    @classmethod
    def _check_method(cls, method: str) -> None:
        if method in ("INVITE", "ACK"):
            raise ValueError(f"not a non-INVITE request: {method}")

    def respond(self, response: Response) -> list[Action]:
        state = self.state
        if state is not _STATE_TRYING and state is not _STATE_PROCEEDING:
            return []  # after the final response the TU has nothing more to say
        self._last = response
        actions: list[Action] = [_SEND(self, response)]
        if response.status < 200:
            self.state = _STATE_PROCEEDING
            return actions
        if self.reliable:
            return self._terminate(actions)  # Timer J is zero
        self.state = _STATE_COMPLETED
        actions.append(_START_TIMER(self, _TIMER_J, self.timers.timeout))
        return actions

    def receive(self, request: Request) -> list[Action]:
        last = self._last
        if last is None or self.state is _STATE_TERMINATED:
            return []  # Trying: the TU has the request and has not answered yet
        return [_SEND(self, last)]

    def timer_fired(self, timer: Timer) -> list[Action]:
        if self.state is _STATE_COMPLETED and timer == _TIMER_J:
            return self._terminate([])
        return []

    def transport_failed(self) -> list[Action]:
        state = self.state
        actions: list[Action] = []
        if state is _STATE_COMPLETED:
            self._cancel(actions, _TIMER_J)
        elif state is not _STATE_PROCEEDING:
            return []  # nothing was sent in Trying
        actions.append(_TRANSPORT_ERROR(self))
        return self._terminate(actions)
