"""What a role shows its management API: built by the role, read by the handlers.

The roles compose everything below them; the API only reads (and, for the LB's pools and
LCR, writes through storage, so every node sees a change). It never reaches into a role
module: what it may see is handed over here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sipfleet.config import Config
from sipfleet.core.lb.pools import Pools
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.storage import Storage
from sipfleet.transport.tls import TlsCertificates

Counters = Callable[[], Mapping[str, int]]


def no_counters() -> Mapping[str, int]:
    return {}


@dataclass
class RoleView:
    """One role process as its API sees it (with several workers: worker 0)."""

    role: str  # lb | registrar | proxy
    config: Config
    storage: Storage
    listen: Sequence[str]  # the SIP addresses, as written in the config
    counters: Counters = no_counters
    pools: Pools | None = None  # the LB's live pools: targets, health as this worker probes
    lcr: LcrRouter | None = None  # the proxy's LCR: tables and gateway health
    tls: TlsCertificates | None = None  # the LB's TLS certificate, when it has tls: listeners
    started_at: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)
    listening: bool = False  # the role's SIP sockets serve (set by the role)

    @property
    def workers(self) -> int:
        return self.config.node.workers

    @property
    def node(self) -> str:
        return self.config.node.name
