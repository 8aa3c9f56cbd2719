"""LB, registrar and proxy: thin compositions of the other packages.

Each role module has ``async def run(config, *, ready=None, mgmt=None)`` that serves
until cancelled and calls ``ready()`` once it listens; given ``mgmt`` (the management
API's bound socket, sipfleet.mgmt.server), worker 0 serves the API on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine
from typing import Protocol

from sipfleet.config import Config
from sipfleet.mgmt.server import Listener

ROLE_NAMES = ("lb", "registrar", "proxy")


class RoleRunner(Protocol):
    def __call__(
        self,
        config: Config,
        *,
        ready: Callable[[], None] | None = None,
        mgmt: Listener | None = None,
    ) -> Coroutine[None, None, None]: ...


def available_roles() -> list[str]:
    """The roles this installation has (some are still being built)."""
    found = []
    for name in ROLE_NAMES:
        try:
            importlib.import_module(f"sipfleet.roles.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sipfleet.roles.{name}":
                raise
            continue
        found.append(name)
    return found


def role_runner(name: str) -> RoleRunner:
    module = importlib.import_module(f"sipfleet.roles.{name}")
    runner: RoleRunner = module.run
    return runner
