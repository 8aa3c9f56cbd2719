"""rtpengine's ng control protocol, sans-IO: commands out, replies in, no sockets, no clock.

Each datagram is ``<cookie> <bencoded dictionary>``; the reply carries the same cookie
(rtpengine's docs/ng_control_protocol.md). ``NgConnection`` is the protocol state for
one relay, on the model of h11's ``Connection``: the shell hands it a command and gets
the datagram to send (``send``), hands it every datagram that arrives and gets the
outcome of the command it answers (``receive``), asks it for the datagram to send again
while a command is unanswered (``retransmit``), and tells it when the shell gave up
(``forget``). The shell keeps the time: ``retransmit_delays`` says when.

Cookies. rtpengine keeps the reply to every cookie it has seen for 30 to 60 s and
answers a datagram with a known cookie from that cache, without running the command
again: so a retransmission with the same cookie is safe, and a cookie must never be
reused for another command, by this process or by any other proxy of the pool talking
to the same rtpengine (the cache is keyed by cookie alone), nor by this process after a
restart. Hence a random prefix per connection and a counter.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sipfleet.media import bencode
from sipfleet.media.bencode import Encodable, Value
from sipfleet.media.errors import NgError

# Options for every offer and answer: rewrite the o= address too (the c= lines are
# always rewritten), and strip ICE so both ends send media to rtpengine rather than try
# to reach each other. Endpoints behind NAT need nothing more: rtpengine learns the
# address media really comes from with the first packets ("symmetric", its default).
REPLACE: Final = ("origin", "session-connection")
ICE: Final = "remove"


@dataclass(frozen=True, slots=True)
class Command:
    """One ng command: its name (``offer``) and its dictionary, ``command`` included."""

    name: str
    body: dict[str, Encodable]


def ping() -> Command:
    return _command("ping")


def offer(
    *,
    call_id: str,
    from_tag: str,
    sdp: bytes,
    received_from: str | None = None,
    to_tag: str | None = None,
    flags: Sequence[str] = (),
) -> Command:
    """An SDP offer from the endpoint with ``from_tag``. ``received_from``: the address
    the SIP message came from (IPv4 or IPv6); ``to_tag`` for a re-INVITE in a dialog."""
    return _command("offer", **_sdp_options(call_id, from_tag, to_tag, sdp, received_from, flags))


def answer(
    *,
    call_id: str,
    from_tag: str,
    to_tag: str,
    sdp: bytes,
    received_from: str | None = None,
    flags: Sequence[str] = (),
) -> Command:
    """The SDP answer to an offer: ``from_tag`` and ``to_tag`` as in the dialog's From and To
    (the From tag is the offerer's, whoever sends the answer)."""
    return _command("answer", **_sdp_options(call_id, from_tag, to_tag, sdp, received_from, flags))


def delete(*, call_id: str, from_tag: str | None = None, to_tag: str | None = None) -> Command:
    """Tear down the call's media (the whole call when no tag is given)."""
    return _command("delete", **_tags(call_id, from_tag, to_tag))


def query(*, call_id: str, from_tag: str | None = None, to_tag: str | None = None) -> Command:
    return _command("query", **_tags(call_id, from_tag, to_tag))


def _command(name: str, **body: Encodable) -> Command:
    return Command(name, {"command": name, **body})


def _tags(call_id: str, from_tag: str | None, to_tag: str | None) -> dict[str, Encodable]:
    tags: dict[str, Encodable] = {"call-id": call_id}
    if from_tag is not None:
        tags["from-tag"] = from_tag
    if to_tag is not None:
        tags["to-tag"] = to_tag
    return tags


def _sdp_options(
    call_id: str,
    from_tag: str,
    to_tag: str | None,
    sdp: bytes,
    received_from: str | None,
    flags: Sequence[str],
) -> dict[str, Encodable]:
    options = _tags(call_id, from_tag, to_tag)
    options.update(sdp=sdp, replace=list(REPLACE), ICE=ICE)
    if received_from is not None:
        family = "IP6" if ":" in received_from else "IP4"
        options["received-from"] = [family, received_from.strip("[]")]
    if flags:
        options["flags"] = list(flags)
    return options


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``datagram`` to the relay; ``cookie`` names the command from now on."""

    cookie: bytes
    datagram: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """rtpengine carried out the command (``result`` ok, or pong for ping)."""

    cookie: bytes
    command: str
    body: dict[bytes, Value]

    @property
    def warning(self) -> str | None:
        warning = self.body.get(b"warning")
        return _text(warning) if isinstance(warning, bytes) else None

    def sdp(self) -> bytes:
        """The rewritten SDP of an offer or answer reply; NgError when there is none."""
        sdp = self.body.get(b"sdp")
        if not isinstance(sdp, bytes) or not sdp:
            raise NgError(f"{self.command} reply without an SDP")
        return sdp


@dataclass(frozen=True, slots=True)
class Failure:
    """rtpengine refused the command (``result: error``), or its reply was unreadable."""

    cookie: bytes
    command: str
    reason: str


def is_unknown_call(reason: str) -> bool:
    """rtpengine's reason when it holds no such call (spelt "call-id" or "call-ID")."""
    return reason.lower().startswith("unknown call-id")


def retransmit_delays(timeout_s: float, interval_s: float) -> list[float]:
    """The waits of one command: after each but the last, send it again; after the last,
    give up. ``timeout_s`` in all: Kamailio's module sends the same cookie again while a
    command is unanswered, which rtpengine's reply cache makes safe."""
    if timeout_s <= 0 or interval_s <= 0:
        raise ValueError("timeout and retransmission interval must be positive")
    delays: list[float] = []
    left = timeout_s
    while left > interval_s * 1.001:  # no sliver of a wait from rounding
        delays.append(interval_s)
        left -= interval_s
    delays.append(left)
    return delays


class NgConnection:
    """The commands in flight to one relay, by cookie."""

    def __init__(self, cookie_prefix: str | None = None) -> None:
        self._prefix = (cookie_prefix or secrets.token_hex(8)).encode()
        if b" " in self._prefix:
            raise ValueError("a cookie cannot contain a space")
        self._count = 0
        self._pending: dict[bytes, tuple[str, bytes]] = {}  # cookie -> (command, datagram)
        self.ignored = 0  # datagrams that answered nothing in flight, or were unreadable

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def send(self, command: Command) -> Transmit:
        self._count += 1
        cookie = b"%s_%d" % (self._prefix, self._count)
        datagram = cookie + b" " + bencode.encode(command.body)
        self._pending[cookie] = (command.name, datagram)
        return Transmit(cookie, datagram)

    def retransmit(self, cookie: bytes) -> bytes | None:
        """The datagram to send again, while the command is unanswered; else None."""
        pending = self._pending.get(cookie)
        return None if pending is None else pending[1]

    def forget(self, cookie: bytes) -> bool:
        """The shell gave up on the command (timeout, cancellation); a late reply to it
        will be ignored. False when it was no longer in flight."""
        return self._pending.pop(cookie, None) is not None

    def receive(self, datagram: bytes) -> Reply | Failure | None:
        """The outcome of the command ``datagram`` answers, which is then done; None for
        a datagram that answers nothing in flight (late, duplicate, foreign, garbage)."""
        cookie, space, payload = datagram.partition(b" ")
        pending = self._pending.pop(cookie, None) if space else None
        if pending is None:
            self.ignored += 1
            return None
        name = pending[0]
        try:
            body = _reply_body(payload)
        except NgError as exc:
            return Failure(cookie, name, f"malformed reply: {exc}")
        return _outcome(cookie, name, body)


def _reply_body(payload: bytes) -> dict[bytes, Value]:
    body = bencode.decode(payload)
    if not isinstance(body, dict):
        raise NgError("not a dictionary")
    if not isinstance(body.get(b"result"), bytes):
        raise NgError("no result")
    return body


def _outcome(cookie: bytes, name: str, body: dict[bytes, Value]) -> Reply | Failure:
    result = body[b"result"]
    if result == b"ok" or (result == b"pong" and name == "ping"):
        return Reply(cookie, name, body)
    reason = body.get(b"error-reason")
    if isinstance(reason, bytes) and reason:
        return Failure(cookie, name, _text(reason))
    # "error" without a reason, or another result (newer rtpengines answer "load limit")
    return Failure(cookie, name, f"result {_text(result)}" if isinstance(result, bytes) else "")


def _text(raw: bytes) -> str:
    """rtpengine's words for a log line or an exception: never fails, bounded."""
    return raw[:200].decode("utf-8", "replace")
