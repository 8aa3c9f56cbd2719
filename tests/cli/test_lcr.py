"""`sipfleet lcr …` as an operator runs it: import, dry run, rules, export, reload."""

from __future__ import annotations

import json
from collections import Counter
from itertools import permutations
from pathlib import Path

import pytest

from sipfleet.cli import main
from tests.cli.conftest import sipfleet
from tests.conftest import new_database
from tests.dbservers import DbServer

EXAMPLE = Path(__file__).parents[2] / "examples" / "lcr-capabilities.toml"
PLAIN = ("sipgw1", "sipgw3", "sipgw4", "sipgw5")


pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def example(db: str) -> str:
    """The database with the reference example of DESIGN §3 imported."""
    assert main(["lcr", "import", str(EXAMPLE), "--db", db]) == 0
    return db


def draws(capsys: pytest.CaptureFixture[str], db: str, *args: str) -> list[list[dict[str, object]]]:
    status, out, err = sipfleet(capsys, "lcr", "test", *args, "--json", "--db", db)
    assert (status, err) == (0, "")
    return [json.loads(line) for line in out.splitlines()]


def test_import_reports_what_it_applied(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = sipfleet(capsys, "lcr", "import", str(EXAMPLE), "--db", db)
    assert status == 0
    assert out == (
        f"{EXAMPLE}: 6 gateway(s), 1 rule(s), 8 target(s) imported, "
        "replacing all LCR data (LCR version 1)\n"
    )


def test_reference_example_phone(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    # 1000 draws, not 200: with 200 one of the 24 orders goes unseen about once in 200 runs.
    result = draws(capsys, example, "4312345", "--cap", "phone", "--draws", "1000")
    assert len(result) == 1000
    orders = Counter()
    for trunks in result:
        uris = [trunk["uri"] for trunk in trunks]
        assert uris[0] == "sip:014312345@sipgw6"
        assert uris[-1] == "sip:014312345@sipgw2"
        middle = tuple(str(trunk["gw"]) for trunk in trunks[1:-1])
        assert sorted(middle) == list(PLAIN)
        assert uris[1:-1] == [f"sip:4312345@{gw}" for gw in middle]  # the number unchanged
        orders[middle] += 1
    assert set(orders) == set(permutations(PLAIN))  # all 24 orders of the four


def test_reference_example_fax(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = draws(capsys, example, "4312345", "--cap", "fax", "--draws", "400")
    firsts = Counter()
    for trunks in result:
        assert sorted(str(trunk["gw"]) for trunk in trunks) == ["sipgw2", "sipgw6"]
        assert trunks[0]["uri"] == f"sip:024312345@{trunks[0]['gw']}"
        assert trunks[1]["uri"] == f"sip:024312345@{trunks[1]['gw']}"
        firsts[trunks[0]["gw"]] += 1
    # Binomial(400, 1/2): mean 200, standard deviation 10; five of them either side.
    assert 150 <= firsts["sipgw6"] <= 250


def test_the_human_dry_run(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = sipfleet(capsys, "lcr", "test", "4312345", "--db", example)
    lines = out.splitlines()
    assert status == 0
    assert lines[0] == "4312345 (phone = 1): 6 trunk(s)"
    assert lines[1] == "  1. sipgw6  sip:014312345@sipgw6  (rule 1, priority 1, weight 1)"
    assert lines[6] == "  6. sipgw2  sip:014312345@sipgw2  (rule 1, priority 3, weight 1)"
    # A capability nobody carries: no route.
    status, out, _ = sipfleet(capsys, "lcr", "test", "4312345", "--cap", "4", "--db", example)
    assert (status, out) == (0, "4312345 (capability 4): no route\n")


def test_rules_and_patterns(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = sipfleet(
        capsys,
        "lcr", "rule", "add", "43", "--stopper", "--from", "sip:*@pbx.example.com",
        "--target", "sipgw3:phone:1:1", "--target", "sipgw2:fax", "--db", example,
    )  # fmt: skip
    assert (status, out) == (0, 'rule 2 (prefix "43") added (2 target(s); LCR version 2)\n')
    # The caller matches: only the stopper rule's trunk. Another caller: the example's.
    [trunks] = draws(capsys, example, "4312345", "--from", "<sip:al@pbx.example.com;user=phone>")
    assert [t["uri"] for t in trunks] == ["sip:4312345@sipgw3"]
    [trunks] = draws(capsys, example, "4312345", "--from", "sip:al@other.example.com")
    assert len(trunks) == 6

    status, out, _ = sipfleet(capsys, "lcr", "rule", "list", "--db", example)
    assert out.splitlines()[9:] == [
        'rule 2 (prefix "43")  from=sip:*@pbx.example.com  stopper',
        "  sipgw3  phone  priority=1  weight=1",
        "  sipgw2  fax  priority=1  weight=1",
    ]
    status, out, _ = sipfleet(capsys, "lcr", "rule", "list", "--json", "--db", example)
    listed = json.loads(out)
    assert [rule["id"] for rule in listed] == [1, 2]
    assert listed[1]["targets"] == [
        {"gw": "sipgw3", "cap": 1, "priority": 1, "weight": 1},
        {"gw": "sipgw2", "cap": 2, "priority": 1, "weight": 1},
    ]

    assert (
        sipfleet(capsys, "lcr", "target", "add", "2", "sipgw1:phone:2:5", "--db", example)[0] == 0
    )
    [trunks] = draws(capsys, example, "4312345", "--from", "sip:al@pbx.example.com")
    assert [t["gw"] for t in trunks] == ["sipgw3", "sipgw1"]
    assert sipfleet(capsys, "lcr", "target", "remove", "2", "sipgw3", "--db", example)[1] == (
        "rule 2: 1 target(s) removed (LCR version 4)\n"
    )
    assert sipfleet(capsys, "lcr", "rule", "remove", "2", "--db", example)[1] == (
        "rule 2 removed (LCR version 5)\n"
    )
    [trunks] = draws(capsys, example, "4312345", "--from", "sip:al@pbx.example.com")
    assert len(trunks) == 6


def test_export_imports_again(
    example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sipfleet(
        capsys,
        "gw", "add", "odd gw", "--host", "[2001:db8::5]", "--port", "5070", "--transport", "tcp",
        "--strip", "2", "--cap", "phone+fax+8:+49", "--trusted", "--disabled", "--db", example,
    )[0] == 0  # fmt: skip
    assert sipfleet(
        capsys,
        "lcr", "rule", "add", "0049", "--id", "40", "--ruri", 'sip:"quoted"*', "--disabled",
        "--target", "odd gw:phone+8:2:0", "--db", example,
    )[0] == 0  # fmt: skip
    status, exported, _ = sipfleet(capsys, "lcr", "export", "--db", example)
    assert status == 0
    assert exported.startswith("# sipfleet lcr export: LCR version 3\n")
    assert 'caps = [{ cap = ["phone", "fax", 8], prefix = "+49" }]' in exported
    assert 'request_uri = "sip:\\"quoted\\"*"' in exported

    file = tmp_path / "exported.toml"
    file.write_text(exported)
    other = f"sqlite://{tmp_path / 'other.db'}"
    assert main(["db", "upgrade", "--db", other]) == 0
    assert sipfleet(capsys, "lcr", "import", str(file), "--db", other)[0] == 0
    again = sipfleet(capsys, "lcr", "export", "--db", other)[1]
    assert again.replace("version 1", "version 3") == exported
    for database in (example, other):
        [trunks] = draws(capsys, database, "4312345", "--cap", "fax")
        assert trunks[0]["gw"] in ("sipgw2", "sipgw6")


def test_a_failed_import_changes_nothing(
    example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sipfleet(capsys, "lcr", "export", "--db", example)[1]
    bad = tmp_path / "bad.toml"
    bad.write_text(
        EXAMPLE.read_text()
        .replace('gw = "sipgw5"', 'gw = "sipgw9"')
        .replace('name = "sipgw3"\nhost = "sipgw3"', 'name = "sipgw3"\nhost = "sipgw3"\nport = 0')
    )
    status, _, err = sipfleet(capsys, "lcr", "import", str(bad), "--db", example)
    assert status == 1
    assert err == (
        f"sipfleet: {bad}: 2 problems\n"
        '  gateway "sipgw3": port: 0 is not between 1 and 65535\n'
        '  rule 1 (prefix ""): target gw "sipgw9" is not a known gateway\n'
    )
    assert sipfleet(capsys, "lcr", "export", "--db", example)[1] == before


def test_merge_keeps_what_the_file_does_not_name(
    example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.toml"
    extra.write_text(
        '[[gateway]]\nname = "carrier"\nhost = "gw.carrier.net"\ncaps = [{ cap = "phone" }]\n'
        '[[rule]]\nid = 2\nprefix = "49"\n'
        '[[rule.target]]\ngw = "carrier"\ncap = "phone"\n'
        '[[rule.target]]\ngw = "sipgw1"\ncap = "phone"\npriority = 2\n'  # from the database
    )
    # Alone, the file is incomplete (sipgw1 is not in it): replacing is refused.
    status, _, err = sipfleet(capsys, "lcr", "import", str(extra), "--db", example)
    assert status == 1
    assert err == (
        f'sipfleet: {extra}: rule 2 (prefix "49"): target gw "sipgw1" is not a known gateway\n'
    )
    status, out, _ = sipfleet(capsys, "lcr", "import", str(extra), "--merge", "--db", example)
    assert status == 0
    assert out.endswith("merged into the LCR data (LCR version 2)\n")
    [trunks] = draws(capsys, example, "4912345")
    assert [t["uri"] for t in trunks][:2] == ["sip:4912345@gw.carrier.net", "sip:4912345@sipgw1"]
    [trunks] = draws(capsys, example, "4312345")
    assert trunks[0]["uri"] == "sip:014312345@sipgw6"


def test_reload_moves_the_version(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = sipfleet(capsys, "lcr", "reload", "--db", example)
    assert (status, out) == (
        0,
        "LCR version 2: running proxies load it within their reload interval (5 s by default)\n",
    )
    assert sipfleet(capsys, "lcr", "reload", "--db", example)[1].startswith("LCR version 3:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["lcr", "rule", "add", "43", "--target", "sipgw9:phone:1:1"],
            'rule 2 (prefix "43"): target gw "sipgw9" is not a known gateway',
        ),
        (
            ["lcr", "rule", "add", "4x3", "--target", "sipgw1:phone:1:1"],
            'rule 2 (prefix "4x3"): prefix: "4x3" may hold only digits',
        ),
        (
            ["lcr", "rule", "add", "43", "--target", "sipgw1:0:1:1"],
            'rule 2 (prefix "43"): target gw "sipgw1": cap: 0 names no capability',
        ),
        (
            ["lcr", "rule", "add", "43", "--target", "sipgw1:phone:1:-1"],
            'rule 2 (prefix "43"): target gw "sipgw1": weight: -1 is negative',
        ),
        (
            ["lcr", "rule", "add", "43", "--target", "sipgw1:phone:0:1"],
            'rule 2 (prefix "43"): target gw "sipgw1": priority: 0 is less than 1',
        ),
        (
            ["lcr", "rule", "add", "43", "--target", "sipgw3:fax:1:1"],
            'rule 2 (prefix "43"): target gw "sipgw3": cap: bits 2 are not carried',
        ),
        (
            ["lcr", "rule", "add", "43", "--target", "sipgw1:modem"],
            'new rule (prefix "43"): target gw "sipgw1": cap: "modem" is neither',
        ),
        (
            ["lcr", "rule", "add", "43", "--target", "sipgw1:phone:high"],
            'target "sipgw1:phone:high": priority: "high" is not an integer',
        ),
        (["lcr", "rule", "add", "43", "--id", "1"], "rule 1: exists already"),
        (["lcr", "rule", "remove", "9"], "rule: no rule 9"),
        (["lcr", "target", "remove", "1", "sipgw9"], 'target: rule 1 has no target "sipgw9"'),
        (["lcr", "target", "add", "9", "sipgw1:phone"], "rule 9: does not exist"),
        (["lcr", "test", "4312345", "--cap", "modem"], "cap: capability 'modem' is not a name"),
        (["lcr", "test", "4312345", "--cap", "3"], "cap: capability '3' is not a single bit"),
        (["lcr", "test", "4312345", "--draws", "0"], "draws: 0 is not between 1 and 100000"),
        (["lcr", "import", "/nonexistent.toml"], "/nonexistent.toml: cannot read"),
    ],
)
def test_errors_name_the_entry_and_field(
    example: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = sipfleet(capsys, "lcr", "export", "--db", example)[1]
    status, _, err = sipfleet(capsys, *args, "--db", example)
    assert status == 1
    assert err.startswith(f"sipfleet: {message}")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert sipfleet(capsys, "lcr", "export", "--db", example)[1] == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('gw = "sipgw5"', 'gw = "sipgw9"'), 'target gw "sipgw9" is not a known gateway'),
        (('prefix = ""', 'prefix = "43a"'), 'rule 1 (prefix "43a"): prefix: "43a" may hold'),
        (('cap = "fax"\npriority = 1', "cap = 0\npriority = 1"), "cap: 0 names no capability"),
        (("weight = 1\n\n# Fax", "weight = -2\n\n# Fax"), "weight: -2 is negative"),
    ],
)
def test_file_errors_name_the_entry_and_field(
    db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    message: str,
) -> None:
    text = EXAMPLE.read_text()
    assert change[0] in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(change[0], change[1], 1))
    status, _, err = sipfleet(capsys, "lcr", "import", str(bad), "--db", db)
    assert status == 1
    assert err.startswith(f"sipfleet: {bad}: ")
    assert message in err
    assert len(err.splitlines()) == 1


@pytest.mark.mysql
@pytest.mark.postgres
@pytest.mark.parametrize("server", ["mariadb_server", "postgres_server"])
def test_on_mariadb_and_postgres(
    server: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    db_server: DbServer = request.getfixturevalue(server)
    url = new_database(db_server, "lcr")
    assert sipfleet(capsys, "db", "upgrade", "--db", url)[0] == 0
    assert sipfleet(capsys, "lcr", "import", str(EXAMPLE), "--db", url)[0] == 0
    for trunks in draws(capsys, url, "4312345", "--draws", "20"):
        assert trunks[0]["uri"] == "sip:014312345@sipgw6"
        assert trunks[-1]["uri"] == "sip:014312345@sipgw2"
    assert sipfleet(capsys, "gw", "disable", "sipgw6", "--db", url)[0] == 0
    [trunks] = draws(capsys, url, "4312345", "--cap", "fax")
    assert [t["gw"] for t in trunks] == ["sipgw2"]
    exported = sipfleet(capsys, "lcr", "export", "--db", url)[1]
    assert "enabled = false" in exported
