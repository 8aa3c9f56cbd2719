"""`sipfleet lb target …` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from sipfleet.storage import LbTargetHealth, open_storage
from tests.cli.conftest import sipfleet

pytestmark = pytest.mark.usefixtures("clean_environment")


def listed(capsys: pytest.CaptureFixture[str], db: str) -> list[dict[str, object]]:
    status, out, _ = sipfleet(capsys, "lb", "target", "list", "--json", "--db", db)
    assert status == 0
    records: list[dict[str, object]] = json.loads(out)
    return records


def test_target_lifecycle(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sipfleet(capsys, "lb", "target", "list", "--db", db)[1] == "no targets\n"
    status, out, _ = sipfleet(
        capsys, "lb", "target", "add", "sip:127.0.0.1:5080", "--pool", "proxy", "--db", db
    )
    assert (status, out) == (0, "proxy target sip:127.0.0.1:5080 added (weight 1, active)\n")
    status, _, _ = sipfleet(
        capsys, "lb", "target", "add", "sip:127.0.0.1:5070", "--pool", "registrar",
        "--weight", "3", "--db", db,
    )  # fmt: skip
    assert status == 0
    assert [(r["pool"], r["uri"], r["weight"], r["state"]) for r in listed(capsys, db)] == [
        ("proxy", "sip:127.0.0.1:5080", 1, "active"),
        ("registrar", "sip:127.0.0.1:5070", 3, "active"),
    ]
    assert sipfleet(capsys, "lb", "target", "drain", "sip:127.0.0.1:5080", "--db", db)[1] == (
        "proxy target sip:127.0.0.1:5080 is draining\n"
    )
    sipfleet(capsys, "lb", "target", "disable", "sip:127.0.0.1:5070", "--db", db)
    assert [r["state"] for r in listed(capsys, db)] == ["draining", "disabled"]
    sipfleet(capsys, "lb", "target", "enable", "sip:127.0.0.1:5080", "--db", db)
    status, out, _ = sipfleet(capsys, "lb", "target", "remove", "sip:127.0.0.1:5070", "--db", db)
    assert (status, out) == (0, "registrar target sip:127.0.0.1:5070 removed\n")
    assert [(r["uri"], r["state"]) for r in listed(capsys, db)] == [
        ("sip:127.0.0.1:5080", "active")
    ]


def test_list_shows_each_lbs_view(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    sipfleet(capsys, "lb", "target", "add", "sip:127.0.0.1:5080", "--pool", "proxy", "--db", db)
    now = int(time.time())

    async def report() -> None:
        storage = open_storage(db)
        try:
            view = LbTargetHealth("lb-a", "proxy", "sip:127.0.0.1:5080", "down", now - 60, now)
            await storage.lb_targets.report_health("lb-a", [view])
            old = LbTargetHealth("lb-b", "proxy", "sip:127.0.0.1:5080", "up", now - 900, now - 600)
            await storage.lb_targets.report_health("lb-b", [old])
        finally:
            await storage.close()

    asyncio.run(report())
    (record,) = listed(capsys, db)
    assert record["health"] == {
        "lb-a": {"health": "down", "since": now - 60, "checked": now, "stale": False},
        "lb-b": {"health": "up", "since": now - 900, "checked": now - 600, "stale": True},
    }
    line = sipfleet(capsys, "lb", "target", "list", "--db", db)[1]
    assert line.startswith("proxy      sip:127.0.0.1:5080  weight=1  active    lb-a: down since ")
    assert "lb-b: up since " in line
    assert line.rstrip().endswith("(stale)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "sip:10.0.0.256:5080", "--pool", "proxy"], "nor a host name"),
        (["add", "tel:+431", "--pool", "proxy"], "only sip: URIs"),
        (["add", "sip:127.0.0.1:5080", "--pool", "proxy", "--weight", "-1"], "weight"),
        (["add", "sip:127.0.0.1:5099", "--pool", "proxy"], "already in the proxy pool"),
        (["remove", "sip:127.0.0.1:5081"], "no target sip:127.0.0.1:5081"),
        (["drain", "sip:127.0.0.1:5099", "--pool", "registrar"], "no sip:127.0.0.1:5099 in the"),
    ],
)
def test_errors_are_one_line(
    db: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    sipfleet(capsys, "lb", "target", "add", "sip:127.0.0.1:5099", "--pool", "proxy", "--db", db)
    status, _, err = sipfleet(capsys, "lb", "target", *args, "--db", db)
    assert status == 1
    assert err.startswith("sipfleet: lb target: ")
    assert message in err
    assert len(err.splitlines()) == 1


def test_a_uri_in_both_pools_needs_the_pool(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for pool in ("proxy", "registrar"):
        sipfleet(capsys, "lb", "target", "add", "sip:127.0.0.1:5090", "--pool", pool, "--db", db)
    status, _, err = sipfleet(capsys, "lb", "target", "remove", "sip:127.0.0.1:5090", "--db", db)
    assert status == 1
    assert "say --pool" in err
    status, out, _ = sipfleet(
        capsys, "lb", "target", "remove", "sip:127.0.0.1:5090", "--pool", "proxy", "--db", db
    )
    assert (status, out) == (0, "proxy target sip:127.0.0.1:5090 removed\n")
