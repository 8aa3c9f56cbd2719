"""Sending one branch (§16.6): the forwarded copy, its next hop, our Via, the client
transaction; and the CANCEL for a branch.

Host names are resolved in a task (bounded); IP literals go out at once. A target
that cannot be reached (no parse, no transport, no address) is reported back with the
status it counts as: 416 for a scheme we cannot route, 503 for the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.branch import BranchMaker
from sipfleet.core.proxy.context import Branch
from sipfleet.core.proxy.forward import forward_copy, wants_record_route
from sipfleet.core.proxy.hooks import MessageHooks
from sipfleet.core.proxy.resolve import ResolveError, Resolver, literal_destination
from sipfleet.core.proxy.shell import TransactionShell
from sipfleet.sip.builders import make_cancel
from sipfleet.sip.dialog_token import DialogTokens
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Request
from sipfleet.sip.transaction import ClientTransaction, TransactionLayer
from sipfleet.sip.uri import Uri
from sipfleet.transport.base import Destination, TransportError, TransportName
from sipfleet.transport.sockets import normalise_host

if TYPE_CHECKING:
    from sipfleet.core.proxy.calls import Call

log = logging.getLogger(__name__)
Unreachable = Callable[["Call", Branch, int], None]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class BranchSender:
    def __init__(
        self,
        *,
        endpoint: SipEndpoint,
        layer: TransactionLayer,
        shell: TransactionShell,
        hooks: MessageHooks,
        record_route: bool,
        dialog_tokens: DialogTokens,
        spawn: Spawn,
        unreachable: Unreachable,
    ) -> None:
        self.endpoint = endpoint
        self.layer = layer
        self.shell = shell
        self.hooks = hooks
        self.record_route = record_route
        self.dialog_tokens = dialog_tokens
        self.spawn = spawn
        self.unreachable = unreachable
        self.resolver = Resolver()
        self.branches = BranchMaker()
        self._via_prefix: dict[tuple[TransportName, bool], str] = {}
        self._record_route: str | None = None
        # Client transactions per TCP destination: a connect that fails later (the
        # endpoint reports it by destination) fails them all as transport errors.
        self.tcp_clients: dict[tuple[str, int], list[ClientTransaction]] = {}

    def start(self, call: Call, branch: Branch) -> None:
        request = call.ctx.request
        record_route = None
        if self.record_route and wants_record_route(request):
            ours = self._record_route or self._our_record_route()
            ours = self.dialog_tokens.stamp(ours, request)
            record_route = self.hooks.record_route(call.ctx, ours)
        try:
            copy, next_hop = forward_copy(
                request, branch.target, record_route=record_route, headers=call.ctx.extra_headers
            )
            destination = literal_destination(next_hop)
        except (ParseError, ResolveError) as exc:
            self._unreachable(call, branch, exc)
            return
        branch.request = copy
        if destination is not None:
            self._send(call, branch, copy, destination)
        else:
            self.spawn(self._resolve_and_send(call, branch, copy, next_hop))

    def cancel(self, branch: Branch) -> None:
        """CANCEL for a branch that had a provisional response (§9.1)."""
        if branch.request is None or branch.destination is None:
            return
        client, actions = self.layer.create_client(
            make_cancel(branch.request), peer=branch.destination
        )
        self._track(client, branch.destination)
        self.shell.execute(actions)

    def failed_toward(self, destination: Destination) -> list[ClientTransaction]:
        """The client transactions toward a TCP destination the endpoint gave up on."""
        return self.tcp_clients.pop((normalise_host(destination.host), destination.port), [])

    async def _resolve_and_send(self, call: Call, branch: Branch, copy: Request, uri: Uri) -> None:
        try:
            destination = await self.resolver.resolve(uri)
        except ResolveError as exc:
            self._unreachable(call, branch, exc)
            return
        self._send(call, branch, copy, destination)

    def _send(self, call: Call, branch: Branch, copy: Request, destination: Destination) -> None:
        try:
            via = self._via(destination) + self.branches.make(call.loop_hash)
        except TransportError as exc:
            self._unreachable(call, branch, exc)
            return
        self.hooks.forwarding(copy, call.ctx)
        copy.push_via(via)
        branch.destination = destination
        # The transaction points at the branch, never the other way round: no reference
        # cycle, so a finished call is freed by reference counting, not by the collector.
        client, actions = self.layer.create_client(copy, peer=destination, context=(call, branch))
        self._track(client, destination)
        self.shell.execute(actions)

    def _track(self, client: ClientTransaction, destination: Destination) -> None:
        if destination.transport != "tcp":
            return
        key = (normalise_host(destination.host), destination.port)
        clients = self.tcp_clients.setdefault(key, [])
        clients.append(client)
        if len(clients) > 64:  # forget the finished ones now and then
            clients[:] = [each for each in clients if not each.terminated]

    def _via(self, destination: Destination) -> str:
        key = (destination.transport, ":" in destination.host)
        prefix = self._via_prefix.get(key)
        if prefix is None:
            sent_by = self.endpoint.sent_by(destination.transport, destination.host)
            prefix = f"SIP/2.0/{destination.transport.upper()} {sent_by};branch="
            self._via_prefix[key] = prefix
        return prefix

    def _our_record_route(self) -> str:
        """``<sip:host:port;lr>`` of our first listen address (UDP preferred)."""
        addresses = sorted(self.endpoint.addresses, key=lambda a: a.transport != "udp")
        first = addresses[0]
        host = f"[{first.host}]" if ":" in first.host else first.host
        transport = "" if first.transport == "udp" else f";transport={first.transport}"
        self._record_route = f"<sip:{host}:{first.port}{transport};lr>"
        return self._record_route

    def _unreachable(self, call: Call, branch: Branch, exc: Exception) -> None:
        log.info("%r: target %s unreachable: %s", call.server.request, branch.target.uri, exc)
        self.unreachable(call, branch, getattr(exc, "status", 503))
