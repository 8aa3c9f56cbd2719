"""Overload detection (DESIGN §6): how much is waiting in the socket buffers, and how
late the event loop runs, over a window of time.

When more arrives than the proxy can handle, datagrams wait in the kernel's receive
buffer (megabytes: seconds of work), the callers retransmit, and the copies join the
queue. The event loop itself stays punctual while it drains the buffer in batches,
so the buffer's fill (``SO_MEMINFO``, Linux) is the signal; loop lag is the fallback.

A pause is not overload: after the loop stood still for a moment (a slow system call,
a page fault storm, the host's scheduler) the buffer holds a burst and the loop is late
once, then the backlog shrinks as the loop catches up. Overload is pressure that lasts:
the backlog or the lag above its mark on every check for ``sustain`` seconds, with the
backlog not shrinking by a quarter over that window (a backlog that drains is being
caught up with). While overloaded the proxy refuses new requests with a stateless 503
(tens of microseconds each) and keeps serving what is under way (responses, ACK, BYE,
CANCEL): it finishes the calls it started instead of starting more than it can finish.
It accepts new requests again after ``calm`` consecutive calm checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import Params, parse_params
from sipfleet.sip.message import Request
from sipfleet.sip.via import parse_via

log = logging.getLogger(__name__)

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux; index 0 is the receive queue
_MEMINFO = struct.Struct("9I")


@dataclass(slots=True)
class OverloadMonitor:
    """The decision, without a clock or sockets: feed it each check's time and
    measurements."""

    enter_backlog: int = 1 << 20  # bytes (kernel accounting) queued: ~450 datagrams
    leave_backlog: int = 128 << 10
    enter_lag: float = 0.1  # seconds the loop is late
    leave_lag: float = 0.02
    sustain: float = 0.5  # seconds of pressure on every check before it counts
    calm: int = 3  # calm checks in a row before new requests are accepted again
    overloaded: bool = False
    episodes: int = 0
    _calm_checks: int = 0
    _pressed_since: float | None = None
    _backlog_then: int = 0  # the backlog when the current window began

    def observe(self, now: float, lag: float, backlog: int) -> bool:
        """Record one check at time ``now``; returns whether new requests should be
        refused now."""
        pressed = lag >= self.enter_lag or backlog >= self.enter_backlog
        if self.overloaded:
            self._settle(lag, backlog)
        elif not pressed:
            self._pressed_since = None
        elif self._pressed_since is None:
            self._pressed_since, self._backlog_then = now, backlog
        elif now - self._pressed_since >= self.sustain:
            draining = self._backlog_then > 0 and backlog * 4 <= self._backlog_then * 3
            if draining:  # a pause's burst being caught up with: watch the next window
                self._pressed_since, self._backlog_then = now, backlog
            else:
                self._enter(lag, backlog)
        return self.overloaded

    def _enter(self, lag: float, backlog: int) -> None:
        self.overloaded = True
        self.episodes += 1
        self._calm_checks = 0
        self._pressed_since = None
        log.warning(
            "overloaded (%d KB waiting, loop %.0f ms late, for %.1f s): new requests get 503",
            backlog >> 10,
            lag * 1e3,
            self.sustain,
        )

    def _settle(self, lag: float, backlog: int) -> None:
        calm = lag < self.leave_lag and backlog < self.leave_backlog
        self._calm_checks = self._calm_checks + 1 if calm else 0
        if self._calm_checks >= self.calm:
            self.overloaded = False
            log.info("overload over: accepting new requests again")


def receive_backlog(sockets: Sequence[socket.socket]) -> Callable[[], int]:
    """Bytes waiting in the receive buffers of the datagram sockets among ``sockets``
    (0 where not measurable; a stream socket's queue is the peer's to pace)."""
    datagram = [sock for sock in sockets if sock.type == socket.SOCK_DGRAM]
    if not datagram:
        return no_backlog

    def backlog() -> int:
        total = 0
        for sock in datagram:
            with contextlib.suppress(OSError, struct.error):
                total += _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0]
        return total

    return backlog


def no_backlog() -> int:
    return 0


def answers_a_challenge(request: Request) -> bool:
    """It carries credentials: the answer to a 401/407 the cluster already sent. Shed
    last: refused, the exchange already paid for is wasted and starts again (digest
    registrations at twice the maximum through the LB: goodput 69-77 % of the maximum
    when shed alike, 82-93 % when shed last; docs/benchmarks.md)."""
    keys = request.keys
    return "authorization" in keys or "proxy-authorization" in keys


async def watch(
    observe: Callable[[float, float, int], object],
    backlog: Callable[[], int] = no_backlog,
    period: float = 0.05,
) -> None:
    """Check every ``period`` seconds, forever: ``observe(now, lag, backlog)``
    (``OverloadMonitor.observe``, or a role's that feeds it and more)."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(period)
        lag = max(0.0, time.monotonic() - started - period)
        observe(time.monotonic(), lag, backlog())


class AnswerBudget:
    """How many overload answers (503) a process may still send: earned by the requests
    it serves, ``per_served`` each, at most ``burst`` saved up.

    Under load a 503 costs a REGISTER-serving process about a third of a served request
    (read, parse, answer, send). At twice the capacity, answering every excess request
    took more than half the CPU and goodput fell to 43 % of the maximum (measured). With
    the answers paid for by the work served, shedding can never take more than a fixed
    share of the process; what the budget does not cover is dropped unanswered, as a full
    socket buffer would drop it, and comes back as a retransmission.
    """

    def __init__(self, per_served: float = 0.5, burst: float = 200.0) -> None:
        self.per_served = per_served
        self.burst = burst
        self.tokens = burst

    def served(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.per_served)

    def take(self) -> bool:
        """True: answer this one with 503 (and spend it); False: drop it."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# -- RFC 7339 loss-based overload control between the LB and the registrars ------------------
#
# Shedding where the overload is (the registrar) costs the CPU that serving needs and, past
# the answer budget, brings every dropped REGISTER back as retransmissions that the LB
# relays again: at twice the maximum through the LB, 65-84 % of the maximum was served
# (docs/benchmarks.md). RFC 7339 moves the refusing to the hop before: the client (the LB)
# says in its Via that it takes part (``oc``), and the overloaded server answers, in that
# same Via of every response, which share of new requests the client should refuse for it
# (``oc=<percent>``), for how long (``oc-validity``, ms), in what order (``oc-seq``).
OC_SUPPORTED: Final = ";oc"  # the client's Via parameter
OC_VALUE: Final = ";oc="  # present in a server's answer
OC_PARAM: Final = ";oc-"  # oc-algo, oc-validity, oc-seq
LOSS_ALGORITHM: Final = '"loss"'  # oc-algo as a server writes it (RFC 7339: quoted)
DEFAULT_VALIDITY: Final = 0.5  # seconds, where an answer names none


class LossControl:
    """The server's half, without a clock: the share of new requests it asks its clients
    to refuse, from its own receive backlog.

    Every ``period`` seconds of traffic the backlog is compared with two marks and with
    the check before. Above ``high`` at every check for ``sustain`` seconds without
    draining by a quarter over them, the admitted share is cut by ``cut``; then again at
    each check while the queue stays above the mark without draining (a tenth less than
    at the check before): multiplicative, as a queue that keeps growing past the mark is
    near what a client's first retransmission (T1, 500 ms) would find unanswered. A queue
    above the mark for less, or shrinking, is a burst being caught up with (the process
    was not scheduled for a moment: two cores shared by the LB, the registrar, the
    database and the phones at the maximum rate), not an excess: held. Below ``low``, or
    below ``high`` and not growing, the share grows back by ``recovery`` (additive, so
    the offered load is found again without overshooting it); below ``high`` and growing
    it holds. So the share settles where the queue hovers about ``high`` (about 0.1 s of
    work), the process busy: a band in which it only held kept a share refused that the
    process could have served, as a process on a busy host rarely sees its queue empty
    (digest registrations at twice the maximum through the LB: 61 % of the maximum
    served so; docs/benchmarks.md). The process thus keeps its queue short by asking for
    just the excess to be refused, rather than refusing or dropping it itself."""

    def __init__(
        self,
        high: int = 1 << 20,
        low: int = 128 << 10,
        period: float = 0.05,
        sustain: float = 0.2,
        cut: float = 0.8,
        recovery: float = 0.05,
        floor: float = 0.05,
        validity: float = DEFAULT_VALIDITY,
        refusing: str = "asking clients that take part (RFC 7339) to refuse new requests",
        refusing_none: str = "clients asked to refuse nothing",
    ) -> None:
        """``refusing``, ``refusing_none``: what the log says when a share is first
        refused, and when none is again (the LB's own share says so in its words)."""
        self.high, self.low = high, low
        self.refusing, self.refusing_none = refusing, refusing_none
        self.period, self.cut, self.recovery, self.floor = period, cut, recovery, floor
        self.sustain = sustain
        self._pressed_since: float | None = None  # above ``high`` since, before a cut
        self._backlog_then = 0  # the backlog then
        self.validity = validity
        self.admitted = 1.0  # the share of new requests the clients should let through
        self._checked = -1e18
        self._before = 0  # the backlog at the check before
        self._report_until = -1e18  # oc=0 is still said this long after the last cut
        self._oc_value = ""  # oc_value, as formatted at the check at time _oc_value_of
        self._oc_value_of = -1e18

    def observe(self, now: float, backlog: int) -> None:
        """One measurement; acted on at most once a ``period``."""
        if now - self._checked < self.period:
            return
        self._checked = now
        before, self._before = self._before, backlog
        if self.admitted < 1.0:  # refusing already: cut again while not draining
            pressed = backlog >= self.high and backlog * 10 > before * 9
        else:
            pressed = self._sustained(now, backlog)
        if pressed:
            if self.admitted == 1.0:
                log.warning("overloaded (%d KB waiting): %s", backlog >> 10, self.refusing)
            self.admitted = max(self.floor, self.admitted * self.cut)
        elif self.admitted < 1.0 and (
            backlog < self.low or (backlog < self.high and backlog <= before)
        ):
            self.admitted = min(1.0, self.admitted + self.recovery)
            if self.admitted == 1.0:
                log.info("overload over: %s", self.refusing_none)
        if self.admitted < 1.0:
            self._report_until = now + self.validity

    def _sustained(self, now: float, backlog: int) -> bool:
        """Above ``high`` at every check for ``sustain`` seconds, and not a quarter less
        than when that began: the first cut. Judged over the window, not check by check:
        a process reads in bursts, so one check's dip must not start the wait again (the
        LB's share came after its refuse-everything mark so, at 0.5 s)."""
        if backlog < self.high:
            self._pressed_since = None
            return False
        since = self._pressed_since
        if since is None:
            self._pressed_since, self._backlog_then = now, backlog
            return False
        if now - since < self.sustain:
            return False
        if backlog * 4 <= self._backlog_then * 3:  # drained: a burst caught up with
            self._pressed_since, self._backlog_then = now, backlog
            return False
        self._pressed_since = None
        return True

    @property
    def loss(self) -> int:
        """Percent of new requests to refuse."""
        return round((1.0 - self.admitted) * 100)

    def via_params(self, now: float) -> dict[str, str | None]:
        """What to set in the client's Via in a response (its bare ``oc`` given a value):
        the loss while it lasts, and ``oc=0`` for one validity period after (clients then
        stop at once rather than when their last value expires); {} when there is
        nothing to say. ``oc-seq`` is the time of the check that set the loss."""
        if now >= self._report_until:
            return {}
        return {
            "oc": str(self.loss),
            "oc-algo": LOSS_ALGORITHM,
            "oc-validity": str(round(self.validity * 1000)),
            "oc-seq": f"{self._checked:.3f}",
        }

    def oc_value(self, now: float) -> str:
        """``via_params`` as the text that follows a bare ``oc`` at the end of a Via
        (``=<loss>;oc-algo=...``), "" when there is nothing to say. Formatted once per
        check: under overload every answer carries it."""
        if now >= self._report_until:
            return ""
        if self._oc_value_of != self._checked:
            self._oc_value_of = self._checked
            asked = self.via_params(now)
            rest = "".join(f";{name}={value}" for name, value in asked.items() if name != "oc")
            self._oc_value = f"={asked['oc']}{rest}"
        return self._oc_value


@dataclass(slots=True)
class _Asked:
    loss: int  # percent
    until: float
    seq: float


class LossFeedback:
    """The client's half (the LB), without a clock: per server, the loss it asked for and
    until when, and which new requests to refuse in its stead.

    Which are refused is drawn from the request itself (``draw``: its Call-ID and top
    Via, hashed), not from a counter or a random generator: a retransmission gets the
    answer its original got, the LB's two paths (core/lb/fastpath.py, balancer.py) decide
    alike without sharing state, and a phone's next attempt (a new branch) is a new draw,
    so no phone is refused for good."""

    def __init__(self, max_servers: int = 256, own: LossControl | None = None) -> None:
        """``own``: the client's own loss control (the LB's backlog), refused on top of
        what the servers ask."""
        self.max_servers = max_servers
        self.own = own
        # counted by the caller (``count_refusal``): refusing may yet be dropped (edge guard)
        self.refused = 0
        self.refused_own = 0  # of which for the client's own backlog
        self._own_last = False  # the last ``refuses`` said yes for the client's own share
        self._asked: dict[tuple[str, int], _Asked] = {}
        # per server, the last answer's text and what it asked (``heard_via``)
        self._read: dict[tuple[str, int], tuple[str, tuple[int, float, float] | None]] = {}

    def __bool__(self) -> bool:
        own = self.own
        return bool(self._asked) or (own is not None and own.admitted < 1.0)

    def heard(self, server: tuple[str, int], via_params: Params, now: float) -> bool:
        """A response from ``server`` whose Via (ours) carries ``via_params``. Values out
        of range, another algorithm or an older ``oc-seq`` than the last are ignored.
        Returns whether the loss asked of us changed (the LB's other workers are told)."""
        asked = _reading(via_params)
        return asked is not None and self.take(server, *asked, now)

    def heard_via(self, server: tuple[str, int], via: str, now: float) -> bool:
        """``heard``, from the text of our Via as ``server`` answered it. The answer (the
        text from ``;oc=`` on) is read once per server while it stays the same: under
        overload every answer carries it, and a server formats it once a check
        (``LossControl.oc_value``). Parsing the whole Via for each (its quoted
        ``oc-algo`` takes the parser's slow way) was a sixth of the LB's work per answer
        once the registrar asked for a loss (docs/benchmarks.md, session 23)."""
        cut = via.find(OC_VALUE)
        if cut < 0:
            return False
        answer = via[cut:]
        kept = self._read.get(server)
        if kept is None or kept[0] != answer:
            try:
                asked = _reading(_loss_params(via, cut))
            except ParseError:
                asked = None
            if len(self._read) >= self.max_servers:
                self._read.clear()
            kept = self._read[server] = (answer, asked)
        asked = kept[1]
        return asked is not None and self.take(server, *asked, now)

    def take(
        self, server: tuple[str, int], loss: int, validity: float, seq: float, now: float
    ) -> bool:
        """``heard``, read: ``loss`` percent for ``validity`` seconds from ``now``."""
        asked = self._asked.get(server)
        if asked is not None and seq < asked.seq:
            return False
        if loss == 0 or validity == 0:
            return self._asked.pop(server, None) is not None
        if asked is not None:
            changed = asked.loss != loss
            asked.loss, asked.until, asked.seq = loss, now + validity, seq
            return changed
        if len(self._asked) < self.max_servers:
            self._asked[server] = _Asked(loss, now + validity, seq)
            return True
        return False

    def asked(self, server: tuple[str, int]) -> tuple[int, float, float]:
        """The loss asked for ``server``, until when, and its oc-seq; (0, 0, inf) when
        none: taken elsewhere, that ends any loss kept for it."""
        asked = self._asked.get(server)
        if asked is None:
            return 0, 0.0, math.inf
        return asked.loss, asked.until, asked.seq

    def refuses(self, server: tuple[str, int], now: float, draw: str) -> bool:
        """Whether to refuse the new request to ``server`` whose Call-ID and top Via
        make ``draw``: drawn under the server's loss, or else under our own."""
        loss = 0
        asked = self._asked.get(server)
        if asked is not None:
            if now < asked.until:
                loss = asked.loss
            else:
                del self._asked[server]
        own = self.own
        own_loss = own.loss if own is not None and own.admitted < 1.0 else 0
        if loss == 0 and own_loss == 0:
            return False
        drawn = zlib.crc32(draw.encode("utf-8", "surrogateescape")) % 100
        self._own_last = loss <= drawn < own_loss
        return drawn < loss or self._own_last

    def count_refusal(self) -> None:
        """The caller refused what ``refuses`` last said to: counted, and as our own
        share's when it was."""
        self.refused += 1
        if self._own_last:
            self.refused_own += 1


def without_loss_answer(via: str) -> str:
    """Our Via without what a server appended to its bare ``oc`` (RFC 7339): we write
    ``oc`` last, so our own marks all stand before it and read as they were written."""
    cut = via.find(OC_VALUE)
    return via if cut < 0 else via[:cut]


def _loss_params(via: str, cut: int) -> Params:
    """The parameters of the answer that starts at ``cut`` (``;oc=``) in ``via``; the
    whole Via's where a server wrote one of ``oc-*`` before it."""
    if OC_PARAM in via[:cut].lower():
        return parse_via(via).params
    return parse_params(via[cut + 1 :], "Via")


def _reading(via_params: Params) -> tuple[int, float, float] | None:
    """The loss (percent), validity (s) and ``oc-seq`` an answer's Via parameters ask;
    None for values out of range or another algorithm."""
    loss = _percent(via_params.get("oc"))
    algorithm = (via_params.get("oc-algo") or '"loss"').strip('"').lower()
    if loss is None or "loss" not in algorithm.split(","):
        return None
    milliseconds = _milliseconds(via_params.get("oc-validity"))
    validity = DEFAULT_VALIDITY if milliseconds is None else milliseconds / 1000
    return loss, validity, _seq(via_params.get("oc-seq"))


def _percent(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 3:
        return None
    number = int(value)
    return number if number <= 100 else None


def _milliseconds(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


def _seq(value: str | None) -> float:
    try:
        seq = float(value) if value is not None and len(value) <= 32 else 0.0
    except ValueError:
        return 0.0
    return seq if math.isfinite(seq) else 0.0
