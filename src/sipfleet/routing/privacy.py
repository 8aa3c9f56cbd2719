"""Caller privacy in the routing policy: whether a caller's ``clir`` preference hides it.

The proxy hides a caller from the callee (DESIGN §4, ``core/proxy/privacy_hooks.py``)
when ``CallContext.hide_caller`` says so, or, when the policy left it at None, when the
request carries ``Privacy: id`` / ``header`` / ``user``. A policy that wants the
per-user setting asks ``apply_clir(call)`` (the default policy does): a caller whose
``clir`` preference (``usr_preferences``) is ``1``, ``on``, ``yes`` or ``true`` is hidden
unless the request itself says ``Privacy: none`` (a per-call override, as a ``#31#``
prefix does on a phone network).
"""

from __future__ import annotations

from sipfleet.routing.api import CallContext
from sipfleet.sip.privacy import privacy_header

CLIR_PREFERENCE = "clir"
TRUTHY = frozenset({"1", "on", "yes", "true"})
# Requests that carry a caller's identity to a callee: calls, subscriptions, transfers
# and pager messages (anything else out of dialog is not worth a database read).
PRIVATE_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "MESSAGE"})


def clir_on(value: str | None) -> bool:
    return value is not None and value.strip().lower() in TRUTHY


async def apply_clir(call: CallContext) -> None:
    """Set ``call.hide_caller`` from the caller's ``clir`` preference, when the policy has
    not decided yet, the request is a new one that carries the caller's identity and its
    Privacy header says nothing either way. Reads the preference of callers in a served
    domain only (once per request: ``CallContext.preferences`` keeps it)."""
    if call.hide_caller is not None or call.in_dialog or call.method not in PRIVATE_METHODS:
        return
    if privacy_header(call.request) is not None or not call.caller_is_local:
        return
    if clir_on((await call.preferences()).get(CLIR_PREFERENCE)):
        call.hide_caller = True
