"""`sipfleet gw …` as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import sipfleet

EXAMPLE = Path(__file__).parents[2] / "examples" / "lcr-capabilities.toml"


pytestmark = pytest.mark.usefixtures("clean_environment")


def first_trunks(capsys: pytest.CaptureFixture[str], db: str, cap: str = "phone") -> list[str]:
    status, out, _ = sipfleet(capsys, "lcr", "test", "4312345", "--cap", cap, "--json", "--db", db)
    assert status == 0
    return [trunk["gw"] for trunk in json.loads(out)]


def test_gateway_lifecycle(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sipfleet(capsys, "gw", "list", "--db", db)[1] == "no gateways\n"
    status, out, _ = sipfleet(
        capsys,
        "gw", "add", "carrier-b", "--host", "gw.carrier-b.net", "--port", "5080",
        "--transport", "tcp", "--strip", "1", "--cap", "phone:0049", "--cap", "fax:0048",
        "--trusted", "--db", db,
    )  # fmt: skip
    assert (status, out) == (0, 'gateway "carrier-b" added (LCR version 1)\n')
    assert (
        sipfleet(capsys, "gw", "add", "a", "--host", "10.0.0.1", "--disabled", "--db", db)[0] == 0
    )

    status, out, _ = sipfleet(capsys, "gw", "list", "--db", db)
    assert out.splitlines() == [
        "a          10.0.0.1  caps=phone  disabled",
        "carrier-b  gw.carrier-b.net:5080;transport=tcp  caps=phone:0049,fax:0048  strip=1"
        "  enabled  trusted",
    ]
    status, out, _ = sipfleet(capsys, "gw", "list", "--json", "--db", db)
    assert json.loads(out) == [
        {
            "name": "a",
            "host": "10.0.0.1",
            "port": None,
            "transport": None,
            "strip": 0,
            "enabled": False,
            "trusted": False,
            "caps": [{"cap": 1, "prefix": ""}],
        },
        {
            "name": "carrier-b",
            "host": "gw.carrier-b.net",
            "port": 5080,
            "transport": "tcp",
            "strip": 1,
            "enabled": True,
            "trusted": True,
            "caps": [{"cap": 1, "prefix": "0049"}, {"cap": 2, "prefix": "0048"}],
        },
    ]
    assert sipfleet(capsys, "gw", "enable", "a", "--db", db)[1] == (
        'gateway "a" enabled (LCR version 3)\n'
    )
    assert json.loads(sipfleet(capsys, "gw", "list", "--json", "--db", db)[1])[0]["enabled"]
    assert sipfleet(capsys, "gw", "remove", "a", "--db", db)[1] == (
        'gateway "a" removed (LCR version 4)\n'
    )
    assert [
        g["name"] for g in json.loads(sipfleet(capsys, "gw", "list", "--json", "--db", db)[1])
    ] == ["carrier-b"]


def test_the_rewritten_uri_uses_strip_prefix_port_and_transport(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sipfleet(
        capsys,
        "gw", "add", "gw1", "--host", "192.0.2.7", "--port", "5080", "--transport", "tcp",
        "--strip", "2", "--cap", "phone+fax:+49", "--db", db,
    )[0] == 0  # fmt: skip
    assert (
        sipfleet(capsys, "lcr", "rule", "add", "", "--target", "gw1:phone+fax", "--db", db)[0] == 0
    )
    out = sipfleet(capsys, "lcr", "test", "4312345", "--json", "--db", db)[1]
    [trunk] = json.loads(out)
    assert trunk["uri"] == "sip:+4912345@192.0.2.7:5080;transport=tcp"


def test_disabling_a_gateway_reroutes_calls(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sipfleet(capsys, "lcr", "import", str(EXAMPLE), "--db", db)[0] == 0
    assert first_trunks(capsys, db)[0] == "sipgw6"
    assert sipfleet(capsys, "gw", "disable", "sipgw6", "--db", db)[0] == 0
    phone = first_trunks(capsys, db)
    assert "sipgw6" not in phone
    assert len(phone) == 5
    assert first_trunks(capsys, db, "fax") == ["sipgw2"]
    assert sipfleet(capsys, "gw", "enable", "sipgw6", "--db", db)[0] == 0
    assert first_trunks(capsys, db)[0] == "sipgw6"


def test_a_gateway_in_use_is_removed_only_with_its_targets(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sipfleet(capsys, "lcr", "import", str(EXAMPLE), "--db", db)[0] == 0
    status, _, err = sipfleet(capsys, "gw", "remove", "sipgw2", "--db", db)
    assert status == 1
    assert err == (
        'sipfleet: gateway "sipgw2": still a target of rule 1 (prefix "") '
        "(remove those targets first, or use --with-targets)\n"
    )
    assert "sipgw2" in first_trunks(capsys, db)
    status, out, _ = sipfleet(capsys, "gw", "remove", "sipgw2", "--with-targets", "--db", db)
    assert (status, out) == (0, 'gateway "sipgw2" removed (LCR version 2)\n')
    assert first_trunks(capsys, db, "fax") == ["sipgw6"]
    assert len(first_trunks(capsys, db)) == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["gw", "add", "x", "--host", "h", "--cap", "0"],
            'gateway "x": capability 0: cap: 0 names',
        ),
        (
            ["gw", "add", "x", "--host", "h", "--cap", "phone:01a"],
            'gateway "x": capability 1: prefix',
        ),
        (
            ["gw", "add", "x", "--host", "h", "--cap", "modem"],
            'gateway "x": cap: "modem" is neither',
        ),
        (
            ["gw", "add", "x", "--host", "h", "--cap", "phone", "--cap", "phone+fax"],
            'gateway "x": capability 3: cap: bits 1 already have a prefix',
        ),
        (["gw", "add", "x", "--host", "h", "--port", "70000"], 'gateway "x": port: 70000 is not'),
        (["gw", "add", "x", "--host", "h", "--strip", "-1"], 'gateway "x": strip: -1 is negative'),
        (["gw", "add", "x", "--host", "a b"], 'gateway "x": host: "a b" is not a host name'),
        (["gw", "add", "x" * 65, "--host", "h"], f'gateway "{"x" * 65}": name: longer than 64'),
        (["gw", "add", "sipgw1", "--host", "h"], 'gateway "sipgw1": exists already'),
        (["gw", "remove", "nope"], 'gw: no gateway "nope"'),
        (["gw", "enable", "nope"], 'gw: no gateway "nope"'),
    ],
)
def test_errors_name_the_entry_and_field(
    db: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert sipfleet(capsys, "lcr", "import", str(EXAMPLE), "--db", db)[0] == 0
    status, _, err = sipfleet(capsys, *args, "--db", db)
    assert status == 1
    assert err.startswith(f"sipfleet: {message}")
    assert len(err.splitlines()) == 1
    assert len(json.loads(sipfleet(capsys, "gw", "list", "--json", "--db", db)[1])) == 6


def test_an_unmigrated_database_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = sipfleet(capsys, "gw", "list", "--db", f"sqlite://{tmp_path / 'none.db'}")
    assert status == 1
    assert "run `sipfleet db upgrade`" in err
