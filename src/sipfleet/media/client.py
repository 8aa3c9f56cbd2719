"""The asyncio shell of the ng protocol: a pool of rtpengine relays, their health, commands.

``MediaRelays`` keeps one connected UDP socket and one ``NgConnection`` per relay. A
command is sent, sent again with the same cookie every ``retransmit_s`` while
unanswered (rtpengine answers a repeated cookie from its reply cache), and given up
after ``timeout_s``: then ``MediaRelayError``, as for an error reply.

Health: every relay is pinged every ``ping_interval_s``. A relay is down after
``down_after`` pings in a row went unanswered, or at once when a command to it timed
out; any reply puts it back. ``start`` waits for the first round, so ``pick`` sees a
real view from the start.

No reference cycles per command: a command's future holds its outcome (plain data,
never an exception), is dropped when the command ends, and errors are raised from a
frame that holds no exception. The proxy collects only generation 0 (roles/collector.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

from sipfleet.media import ng
from sipfleet.media.bencode import Value
from sipfleet.media.errors import MediaRelayError, NgError
from sipfleet.media.relays import RelayAddress, parse_relays, rendezvous_pick

log = logging.getLogger(__name__)

MAX_IN_FLIGHT: Final = 1_000

Outcome = ng.Reply | ng.Failure


class _RelaySocket(asyncio.DatagramProtocol):
    """Hands what arrives on a relay's socket to its link."""

    def __init__(self, link: _Link) -> None:
        self._link = link

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._link.received(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on the connected socket: nothing listens (yet). The
        # command's timeout and the pings decide the relay's health, not this.
        log.debug("media relay %s: %s", self._link.relay.name, exc)


class _Link:
    """One relay: its socket, its protocol state, the commands waiting, its health."""

    def __init__(self, relay: RelayAddress, cookie_prefix: str | None) -> None:
        self.relay = relay
        self.connection = ng.NgConnection(cookie_prefix)
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[bytes, asyncio.Future[Outcome]] = {}
        self.up = False
        self.misses = 0

    def received(self, datagram: bytes) -> None:
        outcome = self.connection.receive(datagram)
        if outcome is None:
            return
        self.mark_up()
        future = self.waiting.pop(outcome.cookie, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    def send(self, datagram: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(datagram)

    def mark_up(self) -> None:
        self.misses = 0
        if not self.up:
            self.up = True
            log.info("media relay %s is up", self.relay.name)

    def mark_down(self, why: str) -> None:
        if self.up:
            self.up = False
            log.warning("media relay %s is down: %s", self.relay.name, why)


class MediaRelays:
    """The rtpengine relays of a proxy: choose one for a call, send it commands."""

    def __init__(
        self,
        addresses: Sequence[RelayAddress | str],
        *,
        timeout_s: float = 1.0,
        retransmit_s: float = 0.25,
        ping_interval_s: float = 5.0,
        down_after: int = 2,
        max_in_flight: int = MAX_IN_FLIGHT,
        cookie_prefix: str | None = None,
    ) -> None:
        relays = [a for a in addresses if isinstance(a, RelayAddress)]
        relays += parse_relays(a for a in addresses if isinstance(a, str))
        self._links = {relay.name: _Link(relay, cookie_prefix) for relay in relays}
        if len(self._links) != len(relays):
            raise ValueError("media relays: a relay is listed twice")
        self._delays = ng.retransmit_delays(timeout_s, min(retransmit_s, timeout_s))
        self._timeout_s = timeout_s
        self._ping_interval_s = ping_interval_s
        self._down_after = max(1, down_after)
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._health: asyncio.Task[None] | None = None
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "commands",
                "retransmissions",
                "timeouts",
                "errors",
                "overloaded",
                "pings",
                "ping_misses",
            ),
            0,
        )

    @property
    def relays(self) -> tuple[RelayAddress, ...]:
        return tuple(link.relay for link in self._links.values())

    async def start(self) -> None:
        """Open a socket per relay, ping them all once, then keep pinging."""
        loop = asyncio.get_running_loop()
        for link in self._links.values():
            await self._open(loop, link)
        await self._ping_all()
        self._health = asyncio.create_task(self._check_health(), name="media-relay-health")

    async def close(self) -> None:
        self._closed = True
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        for link in self._links.values():
            for cookie, future in link.waiting.items():
                if not future.done():
                    future.set_result(ng.Failure(cookie, "", "the client was closed"))
            link.waiting.clear()
            if link.transport is not None:
                link.transport.close()
                link.transport = None

    # -- choosing a relay ---------------------------------------------------------------

    def pick(self, call_id: str) -> RelayAddress | None:
        """The relay for a new call: the same for a Call-ID in every proxy that sees the
        same relays up; None when none is up."""
        return rendezvous_pick(call_id, [link.relay for link in self._links.values() if link.up])

    def named(self, name: str) -> RelayAddress | None:
        """The configured relay of this name (up or not), else None: a name read from a
        message never makes us send anywhere that is not configured."""
        link = self._links.get(name)
        return None if link is None else link.relay

    def up(self, relay: RelayAddress) -> bool:
        link = self._links.get(relay.name)
        return link is not None and link.up

    def counters(self) -> dict[str, int]:
        return {
            **self._counts,
            "in_flight": self._in_flight,
            "ignored_replies": sum(link.connection.ignored for link in self._links.values()),
            "relays": len(self._links),
            "relays_up": sum(link.up for link in self._links.values()),
        }

    # -- commands ------------------------------------------------------------------------

    async def offer(
        self,
        relay: RelayAddress,
        *,
        call_id: str,
        from_tag: str,
        sdp: bytes,
        received_from: str | None,
        to_tag: str | None = None,
    ) -> bytes:
        """The offer's SDP as rtpengine rewrote it (its address and ports)."""
        command = ng.offer(
            call_id=call_id, from_tag=from_tag, to_tag=to_tag, sdp=sdp, received_from=received_from
        )
        return _sdp(relay, await self._command(relay, command))

    async def answer(
        self,
        relay: RelayAddress,
        *,
        call_id: str,
        from_tag: str,
        to_tag: str,
        sdp: bytes,
        received_from: str | None,
    ) -> bytes:
        """The answer's SDP as rtpengine rewrote it."""
        command = ng.answer(
            call_id=call_id, from_tag=from_tag, to_tag=to_tag, sdp=sdp, received_from=received_from
        )
        return _sdp(relay, await self._command(relay, command))

    async def delete(self, relay: RelayAddress, *, call_id: str) -> None:
        """Tear the call down; a call rtpengine does not know (any more) is not an error."""
        await self._command(relay, ng.delete(call_id=call_id), unknown_call_ok=True)

    async def query(self, relay: RelayAddress, *, call_id: str) -> dict[bytes, Value]:
        """rtpengine's view of the call (tags, media, streams, packet counts)."""
        return (await self._command(relay, ng.query(call_id=call_id))).body

    async def ping(self, relay: RelayAddress) -> None:
        await self._command(relay, ng.ping())

    async def _command(
        self, relay: RelayAddress, command: ng.Command, *, unknown_call_ok: bool = False
    ) -> ng.Reply:
        link = self._links.get(relay.name)
        if link is None or link.relay != relay:
            raise MediaRelayError(f"media relay {relay.name}: not a configured relay")
        if self._in_flight >= self._max_in_flight:
            self._counts["overloaded"] += 1
            raise MediaRelayError(
                f"media relay {relay.name}: overloaded ({self._in_flight} commands in flight)"
            )
        if self._closed or link.transport is None:
            raise MediaRelayError(f"media relay {relay.name}: no socket (not started, or closed)")
        self._counts["commands"] += 1
        outcome = await self._exchange(link, command)
        if outcome is None:
            self._counts["timeouts"] += 1
            why = f"no answer to {command.name} within {self._timeout_s:g} s"
            link.mark_down(why)
            raise MediaRelayError(f"media relay {relay.name}: {why}")
        if isinstance(outcome, ng.Reply):
            return outcome
        if unknown_call_ok and ng.is_unknown_call(outcome.reason):
            return ng.Reply(outcome.cookie, command.name, {})
        self._counts["errors"] += 1
        raise MediaRelayError(f"media relay {relay.name}: {command.name} failed: {outcome.reason}")

    async def _exchange(self, link: _Link, command: ng.Command) -> Outcome | None:
        """Send, retransmit while unanswered, give up after the timeout (None)."""
        transmit = link.connection.send(command)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        link.waiting[transmit.cookie] = future
        self._in_flight += 1
        try:
            link.send(transmit.datagram)
            for attempt, delay in enumerate(self._delays):
                if attempt:
                    self._counts["retransmissions"] += 1
                    link.send(transmit.datagram)
                done, _ = await asyncio.wait((future,), timeout=delay)
                if done:
                    return future.result()
            return None
        finally:
            self._in_flight -= 1
            link.waiting.pop(transmit.cookie, None)
            link.connection.forget(transmit.cookie)

    # -- sockets and health --------------------------------------------------------------

    async def _open(self, loop: asyncio.AbstractEventLoop, link: _Link) -> None:
        """A connected UDP socket: the kernel drops datagrams from anyone but the relay."""
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _RelaySocket(link), remote_addr=(link.relay.host, link.relay.port)
            )
        except OSError as exc:  # a host name that does not resolve (yet)
            log.warning("media relay %s: no socket: %s", link.relay.name, exc)
            return
        link.transport = transport

    async def _check_health(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._ping_interval_s)
            for link in self._links.values():
                if link.transport is None:
                    await self._open(loop, link)
            await self._ping_all()

    async def _ping_all(self) -> None:
        await asyncio.gather(*(self._probe(link) for link in self._links.values()))

    async def _probe(self, link: _Link) -> None:
        self._counts["pings"] += 1
        if self._closed or link.transport is None:
            outcome = None
        else:
            outcome = await self._exchange(link, ng.ping())
        if outcome is not None:
            return  # any reply marked it up already (_Link.received)
        self._counts["ping_misses"] += 1
        link.misses += 1
        if link.misses >= self._down_after:
            link.mark_down(f"{link.misses} pings unanswered")


def _sdp(relay: RelayAddress, reply: ng.Reply) -> bytes:
    sdp = reply.body.get(b"sdp")
    if isinstance(sdp, bytes) and sdp:
        return sdp
    raise MediaRelayError(f"media relay {relay.name}: {reply.command} reply without an SDP")


__all__ = ["MediaRelayError", "MediaRelays", "NgError", "RelayAddress"]
