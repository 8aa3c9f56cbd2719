"""A routing policy for the DNS tests (``[proxy] policy = "tests.dns.relay_policy"``):
every request goes where its Route set or Request-URI points, so a call to
``sip:+4930123@carrier.example`` is sent wherever DNS says carrier.example's SIP is."""

from __future__ import annotations

from sipfleet.config import Config
from sipfleet.routing.api import CallContext, Decision, Relay, RoutingPolicy


class RelayPolicy(RoutingPolicy):
    async def route(self, call: CallContext) -> Decision:
        return Relay()


def make_policy(config: Config) -> RoutingPolicy:
    return RelayPolicy()
