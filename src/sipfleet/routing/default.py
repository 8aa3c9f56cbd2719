"""The default routing policy: what `sipfleet up` does with a request.

1. In-dialog requests that came through our Record-Route (with its dialog token, which the
   engine checks) follow their Route set. Anything else, To tag or not, is a new request:
   the steps below apply, so nobody reaches a user or a gateway unauthenticated by
   claiming a dialog.
2. Requests that claim a local caller (From in a served domain) must carry valid
   Proxy-Authorization (407 otherwise), unless they come from a trusted peer; the From
   user must be the authenticated one (``[proxy] from_must_match_auth``).
3. A callee in a served domain is looked up in the location table and forked to. A
   caller from another domain (not a trusted peer) cannot authenticate: by default
   (``[proxy] foreign_callers = "refuse"``) it gets 403 whoever it calls; with "deliver"
   it reaches local users, and an unknown user answers like an unregistered one (480),
   so nobody outside learns which users exist.
4. Anything else leaves the network (``OffNet``, the LCR), but only for local callers
   and trusted peers: the proxy is not an open relay (403).

Caller privacy: a local caller whose ``clir`` preference is on is hidden from the callee
(``routing.privacy.apply_clir``; ``[proxy] privacy_clir``), as one that sends
``Privacy: id`` always is.
"""

from __future__ import annotations

from sipfleet.config import Config
from sipfleet.routing.api import (
    CallContext,
    Decision,
    LocateUser,
    OffNet,
    Relay,
    Reply,
    RoutingPolicy,
)
from sipfleet.routing.privacy import apply_clir

FOREIGN_REFUSED = Reply(403, "Calls From Other Domains Are Not Accepted")


class DefaultPolicy(RoutingPolicy):
    def __init__(self, config: Config) -> None:
        self.authenticate = config.proxy.authenticate
        self.from_must_match_auth = config.proxy.from_must_match_auth
        self.clir = config.proxy.privacy_clir
        self.deliver_foreign = config.proxy.foreign_callers == "deliver"

    async def route(self, call: CallContext) -> Decision:
        if call.in_dialog and call.routed_to_us:
            return Relay()
        if call.method == "REGISTER":
            return Reply(403, "Register With The Registrar")
        trusted = call.from_trusted_peer
        local_caller = call.caller_is_local
        if local_caller and self.authenticate and not trusted:
            refusal = await self._check_caller(call)
            if refusal is not None:
                return refusal
        if self.clir and local_caller:
            await apply_clir(call)
        if call.callee_is_local:
            if local_caller or trusted:
                return LocateUser()
            if not self.deliver_foreign:
                return FOREIGN_REFUSED  # the same for every callee: no enumeration
            return LocateUser(hide_unknown=True)
        if local_caller or trusted:
            return OffNet()
        return Reply(403, "Relaying Denied")

    async def _check_caller(self, call: CallContext) -> Reply | None:
        outcome = await call.authenticate()
        if isinstance(outcome, Reply):
            return outcome
        if self.from_must_match_auth and not call.caller_matches(outcome):
            return Reply(403, "From Does Not Match The Authenticated User")
        return None


def make_policy(config: Config) -> RoutingPolicy:
    return DefaultPolicy(config)
