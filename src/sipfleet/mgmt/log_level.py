"""The log level changed at run time (``PUT /log-level``) reaches every worker of a role.

Worker 0 answers the API; it writes the level into a small file beside the role's metric
snapshots, and every worker (itself included) reads the file once a second and takes the
level it names. Nothing is sent between the workers, and a restarted worker starts at
the level last set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sipfleet.config import Config
from sipfleet.mgmt.metrics import snapshot_dir

LOGGER = "sipfleet"  # the root of every sipfleet logger
LEVELS = ("debug", "info", "warning", "error")
FOLLOW_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


def level_file(config: Config, role: str) -> Path:
    return snapshot_dir(config, role) / "log-level"


def set_level(config: Config, role: str, level: str) -> None:
    """This process at ``level`` now, the role's other workers within a second."""
    logging.getLogger(LOGGER).setLevel(level.upper())
    path = level_file(config, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".log-level.{os.getpid()}")
    partial.write_text(level)
    os.replace(partial, path)  # a worker never reads half of it


def take_level(path: Path) -> str | None:
    """The level the file names, applied to this process (None: no valid file)."""
    try:
        level = path.read_text().strip().lower()
    except OSError:
        return None
    if level not in LEVELS:
        return None
    root = logging.getLogger(LOGGER)
    if root.level != logging.getLevelName(level.upper()):
        root.setLevel(level.upper())
        log.warning("log level %s, as set through the management API", level)
    return level


async def _follow(path: Path) -> None:
    while True:
        take_level(path)
        await asyncio.sleep(FOLLOW_INTERVAL_S)


@asynccontextmanager
async def following_log_level(config: Config, role: str) -> AsyncIterator[None]:
    """This worker takes the role's run-time log level while inside."""
    task = asyncio.get_running_loop().create_task(_follow(level_file(config, role)))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
