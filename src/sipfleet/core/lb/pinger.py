"""NAT keepalives, the asyncio shell of ``keepalive``: learn, ping, expire, close.

Each worker keeps the flows it owns (handoff.owner_of_flow): UDP flows of the tokens it
made, TCP flows of the connections it holds. What another worker hears about them (a
REGISTER 2xx, an answer to a ping) is handed over. UDP pings leave from the shared
external socket the client registered through, so they refresh exactly its NAT binding;
TCP pings are CRLFCRLF on the client's own connection (RFC 5626 §4.4.1), which also
keeps it open. A TCP connection is closed when its last registration ends or expires.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Literal

from sipfleet.core.lb import handoff
from sipfleet.core.lb.budget import LogBudget
from sipfleet.core.lb.endpoint import LbEndpoint
from sipfleet.core.lb.keepalive import (
    KeepaliveTable,
    KeptFlow,
    Learned,
    OptionsPing,
    ping_answered,
)
from sipfleet.core.lb.router import connection_id
from sipfleet.core.lb.sides import Sides
from sipfleet.sip.flow import FlowTokens
from sipfleet.storage import Storage
from sipfleet.transport.base import Destination, TransportError

log = logging.getLogger(__name__)
CRLF_PING = b"\r\n\r\n"


class Keepalives:
    def __init__(
        self,
        endpoint: LbEndpoint,
        sides: Sides,
        tokens: FlowTokens,
        *,
        lb_id: int,
        workers: int,
        interval: float,
        method: Literal["options", "crlf"],
        enabled: bool,
        now: Callable[[], float],
    ) -> None:
        self.endpoint = endpoint
        self.sides = sides
        self.tokens = tokens
        self.lb_id = lb_id
        self.workers = workers
        self.worker = endpoint.worker_index
        self.enabled = enabled
        self.method = method
        self.now = now
        self.table = KeepaliveTable(interval, answers=method == "options")
        self.ping = OptionsPing(self.worker, f"lbk-{secrets.token_hex(4)}", "lbk")
        self._failures = LogBudget(log)

    # -- learning ------------------------------------------------------------------------
    def learned(self, news: Learned) -> None:
        """A REGISTER 2xx passed through this worker."""
        if news.flow.lb != self.lb_id:
            return  # another LB's flow (a misrouted response): that LB keeps it alive
        owner = handoff.owner_of_flow(news.flow, self.workers)
        if owner != self.worker:
            self.endpoint.hand_over(owner, handoff.Learn(news.token, news.aor, news.lifetime))
            return
        ended = self.table.learn(news, time.time())
        if ended is not None:
            log.debug("flow %s ended (%s unregistered)", _name(ended), news.aor)
            self._close(ended)

    def handed_learn(self, message: handoff.Learn) -> None:
        flow = self.tokens.decode(message.token)
        if flow is not None:
            self.learned(Learned(message.token, flow, message.aor, message.lifetime))

    async def restore(self, storage: Storage) -> int:
        """Rebuild this worker's share of the table from one query of ``location``.
        TCP flows are not taken back: their connections did not survive the restart."""
        restored = 0
        for row in await storage.location.live_flows():
            flow = self.tokens.decode(row.flow)
            if flow is None or flow.lb != self.lb_id or flow.transport != "udp":
                continue
            if handoff.owner_of_flow(flow, self.workers) == self.worker:
                self.table.restore(row.flow, flow, float(row.expires))
                restored += 1
        return restored

    # -- pinging ---------------------------------------------------------------------------
    def tick(self) -> None:
        work = self.table.due(self.now(), time.time())
        for kept in work.expired:
            log.debug("flow %s expired", _name(kept))
            self._close(kept)
        for kept in work.failing:
            self._failures.log(
                logging.INFO, "flow %s does not answer its keepalive pings", _name(kept)
            )
        if not self.enabled:
            return
        for kept in work.ping:
            self._send(kept)

    def _send(self, kept: KeptFlow) -> None:
        flow = kept.flow
        if flow.transport != "udp":  # TCP or TLS: CRLFCRLF on its connection
            connection = connection_id(flow)
            if not self.endpoint.has_connection(connection):
                self.table.remove(kept)
                self.table.stats.lost += 1
                log.info("flow %s: its connection is gone", _name(kept))
                return
            destination = Destination(flow.transport, flow.host, flow.port, connection)
            data = CRLF_PING
        else:
            local = self.sides.local("external", flow.host)
            destination = Destination("udp", flow.host, flow.port, None, local)
            if self.method == "options":
                data = self.ping.build(kept, self.sides.sent_by("external", "udp", flow.host))
            else:
                data = CRLF_PING
        try:
            self.endpoint.send_bytes(data, destination)
            self.table.stats.pings_sent += 1
        except TransportError as exc:
            log.debug("keepalive to %s not sent: %s", _name(kept), exc)

    def answered(self, via: str) -> None:
        """An answer to one of the LB's OPTIONS pings (its top Via is ours)."""
        found = ping_answered(via)
        if found is None:
            return
        worker, flow_id = found
        if worker != self.worker:  # it came in on another worker's socket
            if worker in self.endpoint.siblings:
                self.endpoint.hand_over(worker, handoff.Answered(flow_id))
            return
        self.handed_answer(flow_id)

    def handed_answer(self, flow_id: int) -> None:
        recovered = self.table.answered(flow_id)
        if recovered is not None:
            self._failures.log(logging.INFO, "flow %s answers again", _name(recovered))

    def _close(self, kept: KeptFlow) -> None:
        """A TCP flow without registrations: close its connection (after what is queued
        on it, such as the 2xx of the un-REGISTER, has been written)."""
        if kept.flow.transport == "udp":
            return
        connection = self.endpoint.tcp.connection(connection_id(kept.flow))
        if connection is not None:
            log.info("closing the connection of flow %s: no registration left", _name(kept))
            connection.close()

    def counters(self) -> dict[str, int]:
        return {f"keepalive_{name}": value for name, value in self.table.stats.counters().items()}


def _name(kept: KeptFlow) -> str:
    flow = kept.flow
    return f"{flow.transport}:{flow.host}:{flow.port}"
