"""The stateful proxy (RFC 3261 §16).

The sans-IO core: ``core`` (``ProxyCore``: requests, responses, timers, routing
outcomes in; actions out, ``actions``), over ``checks`` (§16.3), ``routes`` (§16.4,
§16.6 steps 6-7), ``branch`` (loop detection), ``targets`` and ``forward`` (§16.5-16.6)
and ``context`` (§16.7 response context, Timer C, CANCEL). The asyncio shell: ``engine``
(the endpoint's handler: sends, timers, tasks for the policy, plans and DNS). See
docs/proxy.md.
"""

from sipfleet.core.proxy.core import EngineSettings, ProxyCore
from sipfleet.core.proxy.engine import ProxyEngine

__all__ = ["EngineSettings", "ProxyCore", "ProxyEngine"]
