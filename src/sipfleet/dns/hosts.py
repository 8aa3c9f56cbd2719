"""``/etc/hosts``: a name listed there is taken from there, as the C library's resolver
does (``files`` before ``dns``): its addresses on the URI's port (or 5060), no NAPTR or
SRV. So ``localhost`` and the names an operator pins by hand keep working.

The file is read again when it changes, checked at most once per ``recheck`` seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from sipfleet.transport.sockets import is_ip

RECHECK_S = 5.0


def parse_hosts(text: str) -> dict[str, list[str]]:
    """Name (lower case) -> its addresses in file order; comments and bad lines skipped."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not is_ip(fields[0].split("%", 1)[0]):
            continue
        for name in fields[1:]:
            addresses = table.setdefault(name.rstrip(".").lower(), [])
            if fields[0] not in addresses:
                addresses.append(fields[0])
    return table


class HostsFile:
    def __init__(
        self,
        path: str = "/etc/hosts",
        recheck: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.recheck = recheck
        self._clock = clock
        self._checked_at: float | None = None
        self._stamp: int | None = None
        self._table: dict[str, list[str]] = {}

    def addresses(self, name: str) -> list[str]:
        """The addresses the file gives ``name`` (none: ask DNS)."""
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self.recheck:
            self._checked_at = now
            self._reload()
        return self._table.get(name.rstrip(".").lower(), [])

    def _reload(self) -> None:
        try:
            stamp = os.stat(self.path).st_mtime_ns
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8", errors="replace") as file:
                    self._table = parse_hosts(file.read())
                self._stamp = stamp
        except OSError:  # no file: nothing pinned
            self._table, self._stamp = {}, None
