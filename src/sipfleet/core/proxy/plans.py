"""From a policy's decision to a fork plan (or a reply): §16.5 target sets.

``LocateUser`` reads the location table (from the read DSN; the storage retries a miss
on the primary when ``database.retry_primary_on_miss`` is set, so a phone that has just
registered can be called at once). No binding: 480 when the user exists, else 404.
"""

from __future__ import annotations

from sipfleet.core.proxy.targets import (
    ForkPlan,
    Target,
    plan_for_bindings,
    plan_for_trunks,
)
from sipfleet.routing.api import (
    CallContext,
    Decision,
    LocateUser,
    OffNet,
    OffNetRouter,
    OffNetTrunk,
    Relay,
    Reply,
)
from sipfleet.storage.interface import Storage
from sipfleet.storage.model import Aor

NO_SUCH_USER = Reply(404, "Not Found")
NOT_REGISTERED = Reply(480, "Temporarily Unavailable")
NO_ROUTE = Reply(404, "No Route To Destination")
# A Relay to where the request points, adding nothing (every in-dialog request of the
# default policy): one plan for all of them. Frozen, so shared safely; built anew, its
# two frozen dataclasses cost more than the rest of the planning.
AS_ADDRESSED = ForkPlan(((Target(),),))


class Planner:
    def __init__(
        self, storage: Storage, *, serial_forking: bool, off_net: OffNetRouter | None = None
    ) -> None:
        self.storage = storage
        self.serial_forking = serial_forking
        self.off_net = off_net

    async def plan(self, decision: Decision, call: CallContext) -> ForkPlan | Reply:
        headers = (*decision.headers, *call.extra_headers)
        if isinstance(decision, Reply):
            return decision
        if isinstance(decision, Relay):
            if not decision.uris and not headers:
                return AS_ADDRESSED
            targets = tuple(Target(uri) for uri in decision.uris) or (Target(),)
            return ForkPlan((targets,), headers=headers)
        if isinstance(decision, LocateUser):
            return await self._locate(decision, call, headers)
        return await self._off_net(decision, call, headers)

    async def _locate(
        self, decision: LocateUser, call: CallContext, headers: tuple[tuple[str, str], ...]
    ) -> ForkPlan | Reply:
        aor = decision.aor or _request_aor(call)
        if aor is None:
            return NOT_REGISTERED if decision.hide_unknown else NO_SUCH_USER
        bindings = await self.storage.location.lookup_routes(aor)
        if not bindings:
            if decision.hide_unknown:
                return NOT_REGISTERED
            known = await self.storage.subscribers.get(aor.username, aor.domain)
            return NOT_REGISTERED if known is not None else NO_SUCH_USER
        serial = self.serial_forking if decision.serial is None else decision.serial
        return plan_for_bindings(bindings, serial=serial, headers=headers)

    async def _off_net(
        self, decision: OffNet, call: CallContext, headers: tuple[tuple[str, str], ...]
    ) -> ForkPlan | Reply:
        trunks: tuple[str | OffNetTrunk, ...] = ()
        if self.off_net is not None:
            found = await self.off_net.trunks(call, decision.capability)
            if isinstance(found, Reply):
                return found
            trunks = tuple(found)
        targets = [_trunk_target(t) for t in trunks or decision.gateways]
        return plan_for_trunks(targets, headers) if targets else NO_ROUTE


def _trunk_target(trunk: str | OffNetTrunk) -> Target:
    if isinstance(trunk, str):
        return Target(trunk)
    return Target(trunk.uri, gateway=trunk.gateway, timeout=trunk.timeout)


def _request_aor(call: CallContext) -> Aor | None:
    uri = call.callee_uri
    if uri is None or not uri.user:
        return None
    return Aor(uri.user, uri.host_bare)
