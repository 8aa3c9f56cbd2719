"""OPTIONS probes of gateways (the LCR's defunct ones), from the proxy's own address.

A probe is one OPTIONS sent without a transaction: the probe interval is its
retransmission, and an unanswered probe simply stays unanswered. Its answer arrives as
a response no transaction knows; the engine hands such strays to ``answered``, which
recognises our branch and calls back whoever asked. Only the latest probe per key is
remembered, so a gateway that never answers costs one entry, not one per probe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable

from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.resolve import ResolveError, Resolver, literal_destination
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Response
from sipfleet.sip.uri import parse_uri
from sipfleet.transport.base import Destination

log = logging.getLogger(__name__)
PROBE_BRANCH = "z9hG4bK-lcrp-"
Answered = Callable[[int], None]
MAX_SKIPPED = 1000


class OptionsProber:
    def __init__(self, endpoint: SipEndpoint, resolver: Resolver) -> None:
        self.endpoint = endpoint
        self.resolver = resolver
        self.tasks: set[asyncio.Task[None]] = set()  # lookups of gateways named by host
        self._token = secrets.token_hex(4)
        self._prefix = f"{PROBE_BRANCH}{self._token}-"
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, Answered]] = {}  # probe id -> key, callback
        self._latest: dict[str, int] = {}  # key -> its newest probe id
        self.sent = 0
        # With several workers, answers go to the worker that owns their Call-ID
        # (transport/steering.py): probes use only ids whose Call-ID this one owns.
        self.owns_call_id: Callable[[str], bool] = _any_call_id

    def probe(self, key: str, uri: str, answered: Answered) -> None:
        """Send OPTIONS to ``uri``; ``answered(status)`` is called with the first final
        answer to it (if ever). A newer probe for the same ``key`` replaces this one."""
        probe_id = next(self._ids)
        for _ in range(MAX_SKIPPED):  # one in n is ours with n workers: a few tries
            if self.owns_call_id(self._call_id(probe_id)):
                break
            probe_id = next(self._ids)
        older = self._latest.get(key)
        if older is not None:
            self._waiting.pop(older, None)
        self._latest[key] = probe_id
        self._waiting[probe_id] = (key, answered)
        try:
            target = parse_uri(uri, allow_other_schemes=False)
            destination = literal_destination(target)
        except (ParseError, ResolveError) as exc:
            log.warning("probe of %s: %s", uri, exc)
            return
        if destination is not None:
            self._send(probe_id, uri, destination)
        else:
            task = asyncio.get_running_loop().create_task(self._resolve_and_send(probe_id, uri))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _resolve_and_send(self, probe_id: int, uri: str) -> None:
        try:
            destinations = await self.resolver.resolve(parse_uri(uri))
        except ResolveError as exc:
            log.debug("probe of %s: %s", uri, exc)
            return
        self._send(probe_id, uri, destinations[0])  # the first a call would try

    def _send(self, probe_id: int, uri: str, destination: Destination) -> None:
        try:
            sent_by = self.endpoint.sent_by(destination.transport, destination.host)
            data = self._options(probe_id, uri, destination.transport.upper(), sent_by)
            self.endpoint.send_bytes(data, destination)
        except OSError as exc:  # TransportError too: it stays unanswered, the gateway stays out
            log.debug("probe of %s not sent: %s", uri, exc)
            return
        self.sent += 1

    def _options(self, probe_id: int, uri: str, transport: str, sent_by: str) -> bytes:
        return (
            f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {sent_by};branch={self._prefix}{probe_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{sent_by}>;tag={self._token}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: {self._call_id(probe_id)}\r\n"
            f"CSeq: {probe_id} OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def _call_id(self, probe_id: int) -> str:
        return f"lcrp-{self._token}-{probe_id}"

    def answered(self, response: Response) -> bool:
        """True when ``response`` answers one of our probes (it is then used up here)."""
        try:
            branch = response.top_via.branch or ""
        except ParseError:
            return False
        if not branch.startswith(self._prefix):
            return False
        if response.status < 200:
            return True
        try:
            probe_id = int(branch[len(self._prefix) :])
        except ValueError:
            return True
        waiting = self._waiting.pop(probe_id, None)
        if waiting is not None:
            key, callback = waiting
            if self._latest.get(key) == probe_id:
                del self._latest[key]
            callback(response.status)
        return True


def _any_call_id(call_id: str) -> bool:
    return True
