"""A fake shell for transaction tests: runs actions on a fake time line.

It arms timers on a fake clock and feeds ``timer_fired`` back in due order, records
everything else with the time it happened, and checks the timer bookkeeping a real
shell relies on: no timer armed twice, no cancel of a timer that is not armed, nothing
left armed when a transaction terminates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from sipfleet.sip import Message, Request, Response, parse_message
from sipfleet.sip.builders import make_response
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
from tests.sip.corpus import sip

MAX_TIMER_FIRES = 10_000  # bounds every run; a healthy test needs a few dozen


@dataclass
class FakeShell:
    now: float = 0.0
    log: list[tuple[float, Action]] = field(default_factory=list)
    _armed: dict[tuple[Transaction, Timer], tuple[float, int]] = field(default_factory=dict)
    _order: count[int] = field(default_factory=count)

    def run(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, StartTimer):
                slot = (action.transaction, action.timer)
                assert slot not in self._armed, f"{action.timer} armed twice"
                assert action.delay >= 0
                self._armed[slot] = (self.now + action.delay, next(self._order))
            elif isinstance(action, CancelTimer):
                slot = (action.transaction, action.timer)
                assert slot in self._armed, f"cancel of {action.timer}, which is not armed"
                del self._armed[slot]
            else:
                if isinstance(action, Terminated):
                    left = self.armed(action.transaction)
                    assert not left, f"terminated with {left} still armed"
                self.log.append((self.now, action))
        return actions

    def armed(self, transaction: Transaction) -> set[Timer]:
        return {timer for (txn, timer) in self._armed if txn is transaction}

    def advance_to(self, when: float) -> None:
        """Fire every timer due by ``when``, in order, then set the clock to ``when``."""
        for _ in range(MAX_TIMER_FIRES):
            due = [(at, order, slot) for slot, (at, order) in self._armed.items() if at <= when]
            if not due:
                self.now = max(self.now, when)
                return
            at, _, slot = min(due)
            del self._armed[slot]
            self.now = at
            transaction, timer = slot
            self.run(transaction.timer_fired(timer))
        raise AssertionError("timers kept firing")

    # -- what the test looks at -------------------------------------------------------
    def sent(self) -> list[tuple[float, Message]]:
        return [(at, a.message) for at, a in self.log if isinstance(a, Send)]

    def send_times(self) -> list[float]:
        return [at for at, _ in self.sent()]

    def told(self) -> list[tuple[float, str]]:
        """What the TU heard, as (time, 'Deliver 180' | 'Timeout B' | ...)."""
        out: list[tuple[float, str]] = []
        for at, action in self.log:
            if isinstance(action, Deliver):
                out.append((at, f"Deliver {describe(action.message)}"))
            elif isinstance(action, Timeout):
                out.append((at, f"Timeout {action.timer}"))
            elif isinstance(action, TransportError):
                out.append((at, "TransportError"))
            elif isinstance(action, Terminated):
                out.append((at, "Terminated"))
        return out


def describe(message: Message) -> str:
    if isinstance(message, Response):
        return str(message.status)
    assert isinstance(message, Request)
    return message.method


# -- messages ---------------------------------------------------------------------------
def request(
    method: str = "INVITE",
    *,
    transport: str = "UDP",
    branch: str | None = "z9hG4bKtx1",
    sent_by: str = "proxy.example.com:5060",
    uri: str = "sip:bob@biloxi.example.com",
    to_tag: str | None = None,
    cseq: int = 314159,
    cseq_method: str | None = None,
) -> Request:
    """A request as it arrives off the wire."""
    params = f";branch={branch}" if branch is not None else ""
    to = "Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    message = parse_message(
        sip(
            f"""\
{method} {uri} SIP/2.0
Via: SIP/2.0/{transport} {sent_by}{params}
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds
Max-Forwards: 70
Route: <sip:edge.example.com;lr>
To: {to}
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: {cseq} {cseq_method or method}
Contact: <sip:alice@198.51.100.7>
"""
        )
    )
    assert isinstance(message, Request)
    return message


def answer(req: Request, status: int, to_tag: str = "uas1") -> Response:
    """The response a peer sends to ``req``, as it arrives off the wire."""
    message = parse_message(make_response(req, status, to_tag=to_tag).serialize())
    assert isinstance(message, Response)
    return message


def ack_for(invite: Request, response: Response, *, branch: str | None = None) -> Request:
    """The ACK a client sends for ``response`` (same branch unless ``branch``)."""
    via = invite.top_via
    params = via.branch if branch is None else branch
    to_tag = response.to.tag
    message = request(
        "ACK",
        transport=via.transport,
        branch=params,
        sent_by=f"{via.host}:{via.port}" if via.port else via.host,
        uri=invite.uri_text,
        to_tag=to_tag,
        cseq=invite.cseq.seq,
    )
    return message
