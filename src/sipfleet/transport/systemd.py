"""systemd's service notification (sd_notify(3)), for ``Type=notify`` units with a watchdog.

A datagram of ``KEY=value`` lines to the socket named by ``NOTIFY_SOCKET`` (a path, or
``@name`` in the abstract namespace): ``READY=1`` once the role listens, ``STOPPING=1``
when it begins to stop, ``WATCHDOG=1`` at least every half ``WATCHDOG_USEC``. Outside
systemd (no ``NOTIFY_SOCKET``) every call does nothing. The protocol is a single
``sendto``; a library for it would be larger than the code.
"""

from __future__ import annotations

import asyncio
import os
import socket

MIN_WATCHDOG_PERIOD_S = 0.1


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. "READY=1", "STATUS=…") to systemd; False when not under it
    (or the socket is gone: a notification must never stop the role)."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError:
        return False
    return True


def watchdog_period() -> float | None:
    """How often to send ``WATCHDOG=1`` (half the unit's WatchdogSec), when systemd asks
    this process for it; else None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return max(MIN_WATCHDOG_PERIOD_S, int(usec) / 2_000_000)


async def feed_watchdog(period: float) -> None:
    """``WATCHDOG=1`` every ``period`` from this event loop: a loop that stops turning
    (blocked, deadlocked) stops feeding it, and systemd restarts the role."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)
