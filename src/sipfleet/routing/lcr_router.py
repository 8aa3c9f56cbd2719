"""The proxy's off-net router: least-cost routing over the in-memory LCR table, with the
health of the gateways (DESIGN §3; docs/lcr.md "LCR in the proxy").

For an ``OffNet`` decision the engine asks ``trunks(call, capability)``:

- **number**: the dialled number is the Request-URI's user part (sip/sips) without its
  parameters (``;isub=``, ``;phone-context=``), percent-decoded, or a ``tel:`` URI's
  number; RFC 3966 visual separators (``-``, ``.``, ``(``, ``)``) are removed and a
  leading ``+`` is kept, nothing else is rewritten. What is left must be digits, ``+``,
  ``*`` and ``#`` (the characters of rule prefixes), else there is no route. A policy
  that wants another form (national to E.164, say) rewrites the Request-URI first.
- **capability**: the decision's, else the caller's ``lcr_cap`` preference (a name or a
  single bit; read only for callers in a served domain), else fax for a T.38 offer, else
  phone (``lcr.call_capability``).
- **trunks**: ``load_gws`` with the caller's From and the Request-URI for the rules'
  patterns, leaving out defunct gateways; each trunk carries its gateway's name and the
  trunk timeout. No trunk because every gateway of the route is defunct: 503; no route
  at all: none (the proxy answers 404).

The engine reports how each attempt ended (``trunk_ended``), which feeds
``GatewayHealth``; defunct gateways are probed with OPTIONS through the engine's
``OptionsProber``. The table is reloaded by ``LcrCache`` on its timer; a call keeps the
trunks it got, so a reload never disturbs a call under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

from sipfleet.routing.api import CallContext, OffNetTrunk, Reply
from sipfleet.routing.gateway_health import GatewayHealth, HealthChange, is_failure
from sipfleet.routing.lcr import call_capability, load_gws, matchable_uri
from sipfleet.routing.lcr_cache import LcrCache
from sipfleet.routing.lcr_dryrun import parse_capability
from sipfleet.sip.errors import ParseError
from sipfleet.sip.uri import SipUri, TelUri, Uri
from sipfleet.storage.errors import StorageError
from sipfleet.storage.lcr_rows import Gateway

if TYPE_CHECKING:
    from sipfleet.config import Config
    from sipfleet.storage.interface import LcrStore

log = logging.getLogger("sipfleet.lcr")

NUMBER_CHARS = frozenset("0123456789+*#")
VISUAL_SEPARATORS = str.maketrans("", "", "-.()")
ALL_DEFUNCT = Reply(503, "No Gateway Available")
MAX_TICK_S = 1.0


class Prober(Protocol):
    """Sends OPTIONS (``core.proxy.probes.OptionsProber``)."""

    def probe(self, key: str, uri: str, answered: Callable[[int], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class LcrSettings:
    reload_interval: float = 5.0
    trunk_timeout: float = 10.0
    defunct_after: int = 3
    defunct_for: float = 60.0
    probe_interval: float = 5.0

    @classmethod
    def from_config(cls, config: Config) -> LcrSettings:
        proxy = config.proxy
        return cls(
            reload_interval=proxy.lcr_reload_interval_s,
            trunk_timeout=proxy.lcr_trunk_timeout_s,
            defunct_after=proxy.lcr_defunct_after,
            defunct_for=proxy.lcr_defunct_s,
            probe_interval=proxy.lcr_probe_interval_s,
        )


def dialled_number(uri: Uri) -> str | None:
    """The number LCR routes on, or None when the Request-URI carries none."""
    if isinstance(uri, TelUri):
        text = uri.number
    elif isinstance(uri, SipUri) and uri.user:
        text = unquote(uri.user.split(";", 1)[0])
    else:
        return None
    number = text.translate(VISUAL_SEPARATORS)
    if not number or not NUMBER_CHARS.issuperset(number):
        return None
    return number


def gateway_uri(gateway: Gateway) -> str:
    """Where a gateway is probed: ``sip:host[:port][;transport=t]``."""
    port = f":{gateway.port}" if gateway.port is not None else ""
    transport = f";transport={gateway.transport}" if gateway.transport else ""
    return f"sip:{gateway.host}{port}{transport}"


class LcrRouter:
    """An ``OffNetRouter`` (routing.api) over an ``LcrCache``."""

    def __init__(
        self,
        cache: LcrCache,
        settings: LcrSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.settings = settings or LcrSettings()
        self.clock = clock
        self.health = GatewayHealth(
            defunct_after=self.settings.defunct_after,
            defunct_for=self.settings.defunct_for,
            probe_interval=self.settings.probe_interval,
        )
        self.prober: Prober | None = None
        self._ticker: asyncio.Task[None] | None = None
        # Attempts on each gateway that failed, sending the call on to its next trunk if
        # it has one (the metrics' failovers); gateway names come from the LCR tables.
        self.failovers: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Config, store: LcrStore) -> LcrRouter:
        settings = LcrSettings.from_config(config)
        return cls(LcrCache(store, reload_interval=settings.reload_interval), settings)

    # -- running ----------------------------------------------------------------------------
    async def start(self, prober: Prober | None = None) -> None:
        """Load the tables (a database that cannot be read now is retried by the timer),
        then keep them current and probe defunct gateways through ``prober``."""
        self.prober = prober
        try:
            await self.cache.reload()
        except StorageError as exc:
            log.warning("LCR not loaded at start (no off-net route until it is): %s", exc)
        self.cache.start()
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever(), name="lcr-health")

    async def close(self) -> None:
        task, self._ticker = self._ticker, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.cache.close()

    async def _tick_forever(self) -> None:
        interval = min(MAX_TICK_S, self.settings.probe_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick()
            except Exception:
                log.exception("LCR gateway health check failed")

    def tick(self) -> None:
        """Bring back gateways whose defunct time is over; probe the defunct ones due."""
        now = self.clock()
        for change in self.health.expire(now):
            _log_change(change)
        due = self.health.probes_due(now)
        if not due:
            return
        gateways = {gateway.name: gateway for gateway in self.cache.table.rows.gateways}
        for name in due:
            gateway = gateways.get(name)
            if gateway is None:  # gone from the LCR data
                self.health.forget(name)
            elif self.prober is not None:
                self.prober.probe(name, gateway_uri(gateway), self._prober_callback(name))

    def _prober_callback(self, name: str) -> Callable[[int], None]:
        def answered(status: int) -> None:
            change = self.health.probe_answered(name, status)
            if change is not None:
                _log_change(change)

        return answered

    # -- OffNetRouter -----------------------------------------------------------------------
    async def trunks(self, call: CallContext, capability: int | None) -> list[OffNetTrunk] | Reply:
        request = call.request
        number = dialled_number(request.uri)
        if number is None:
            return []
        if capability is None:
            capability = await self.capability_of(call)
        table = self.cache.table  # once: a reload during the call changes nothing for it
        from_uri = _from_text(call)
        request_uri = matchable_uri(request.uri)
        now = self.clock()

        def defunct(gateway: Gateway) -> bool:
            return self.health.is_defunct(gateway.name, now)

        found = load_gws(table, number, capability, from_uri, request_uri, is_defunct=defunct)
        if not found:
            if self.health.defunct(now) and load_gws(
                table, number, capability, from_uri, request_uri
            ):
                log.info("off-net %s (cap %d): every gateway defunct", number, capability)
                return ALL_DEFUNCT
            log.debug("off-net %s (cap %d): no route", number, capability)
            return []
        timeout = self.settings.trunk_timeout
        trunks = [OffNetTrunk(str(t.uri), t.gateway.name, timeout) for t in found]
        log.debug("off-net %s (cap %d): %s", number, capability, [t.uri for t in trunks])
        return trunks

    def trunk_ended(self, gateway: str, status: int, progressed: bool) -> None:
        if is_failure(status, progressed):
            self.failovers[gateway] = self.failovers.get(gateway, 0) + 1
        change = self.health.attempt_ended(gateway, status, progressed, self.clock())
        if change is not None:
            _log_change(change)

    async def capability_of(self, call: CallContext) -> int:
        """The default capability of a call: the caller's ``lcr_cap`` preference, else
        fax for a T.38 offer, else phone."""
        preference = None
        if call.caller_is_local:
            text = (await call.preferences()).get("lcr_cap", "").strip()
            if text:
                try:
                    preference = parse_capability(text)
                except ValueError as exc:
                    log.debug("lcr_cap of %s ignored: %s", call.caller_uri, exc)
        return call_capability(preference, call.request.body or None)


def _from_text(call: CallContext) -> str | None:
    try:
        return matchable_uri(call.request.from_.uri)
    except ParseError:
        return None


def _log_change(change: HealthChange) -> None:
    if change.defunct:
        log.warning("gateway %s is defunct: %s", change.gateway, change.why)
    else:
        log.info("gateway %s is back: %s", change.gateway, change.why)
