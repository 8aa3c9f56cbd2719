"""The embedded database holds every subscriber's HA1, which is as good as the password
for digest authentication: its file is the owner's alone (0600), like the cluster secret.

A new file is created 0600. An upgrade (``sipfleet db upgrade``, ``sipfleet up``) takes
group and other access away from an older file that had it. A role refuses to start on
a file anyone on the host may read or write, and warns about one its group may.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sipfleet.storage.errors import StorageError

OWNER_ONLY = 0o600
log = logging.getLogger("sipfleet.storage")


def create_owner_only(path: Path) -> None:
    """An empty file, 0600 from its first byte (SQLite fills it on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, OWNER_ONLY)
    except FileExistsError:
        return
    os.close(descriptor)


def tighten(path: Path) -> None:
    """Take group and other access away from the database and its WAL files."""
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(each.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            each.chmod(mode & 0o700)
            kept = mode & 0o700
            log.warning("%s was mode %04o, now %04o: it holds password hashes", each, mode, kept)


def check_private(path: Path) -> None:
    """At start-up: refuse a database file anyone on the host may read or write."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o007:
        raise StorageError(
            f"database file {path} is mode {mode:04o}: anyone on this host can read every "
            f"password hash in it; `chmod 600 {path}` (or `sipfleet db upgrade`, which does)"
        )
    if mode & 0o070:
        log.warning("database file %s is mode %04o: its group can read password hashes", path, mode)
