"""The purge timer: every registrar deletes expired bindings now and then.

Each run is one DELETE, safe on several registrars at once (a row deleted by one is simply
not there for the other). Reads filter expired rows anyway, so a late purge only costs
space. A failed run is logged and retried at the next interval: the timer never dies.
"""

from __future__ import annotations

import asyncio
import logging
import random

from sipfleet.storage.errors import StorageError
from sipfleet.storage.interface import LocationStore

log = logging.getLogger("sipfleet.storage")


async def purge_expired_forever(location: LocationStore, interval_s: float) -> None:
    """Run until cancelled. The first run waits a random part of the interval, so that
    registrars started together do not all purge at the same moment."""
    delay = random.uniform(0, interval_s)
    while True:
        await asyncio.sleep(delay)
        delay = interval_s
        try:
            purged = await location.purge_expired()
        except StorageError as exc:
            log.warning("purging expired bindings failed, next try in %g s: %s", interval_s, exc)
            continue
        if purged:
            log.debug("purged %d expired bindings", purged)
