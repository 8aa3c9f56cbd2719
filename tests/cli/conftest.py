"""What the `sipfleet …` command tests share: a clean environment, a fresh SQLite
database, and a way to run the command and read what it printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipfleet.cli import main


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not autouse: only the modules that ask for it (pytestmark) get it, so the other
    tests here keep the environment they had."""
    for variable in ("SIPFLEET_DB_WRITE", "SIPFLEET_DATA_DIR", "SIPFLEET_CLUSTER_SECRET"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite database upgraded to the head revision; its URL."""
    url = f"sqlite://{tmp_path / 'cli.db'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    return url


def sipfleet(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Runs `sipfleet ARGS`; its exit status and only what this run printed."""
    capsys.readouterr()  # drop what earlier steps printed
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err
