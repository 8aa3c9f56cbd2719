"""Debian's Chromium, headless, for the tests that load a page (status page, JsSIP)."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium")


def headless(profile: Path) -> list[str]:
    """The command line every test starts from: headless, as root (no sandbox), with a
    profile of its own and nothing fetched in the background."""
    assert CHROMIUM is not None
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
