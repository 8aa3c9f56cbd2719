"""The stateful proxy (RFC 3261 §16).

Sans-IO parts: ``checks`` (§16.3), ``routes`` (§16.4, §16.6 steps 6-7), ``branch`` (loop
detection), ``targets`` and ``forward`` (§16.5-16.6), ``context`` (§16.7 response
context, Timer C, CANCEL). The asyncio parts: ``shell`` (runs the transaction layer),
``calls`` (policy, plans, branches), ``engine`` (the endpoint's handler). See docs/proxy.md.
"""

from sipfleet.core.proxy.engine import EngineSettings, ProxyEngine

__all__ = ["EngineSettings", "ProxyEngine"]
