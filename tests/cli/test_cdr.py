"""`sipfleet cdr list|export`, run as an operator would, on a database `db upgrade` made."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import pytest

from sipfleet.cli.cdr import format_seconds, parse_time
from sipfleet.cli.common import CliError
from sipfleet.storage import CallRecord, open_storage
from tests.cli.conftest import sipfleet

pytestmark = pytest.mark.usefixtures("clean_environment")

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z in unix ms
ANSWERED = CallRecord(
    "a1@pbx",
    "from-a",
    "to-a",
    caller="sip:alice@example.com",
    caller_shown="sip:anonymous@anonymous.invalid",
    callee="sip:bob@example.com",
    destination="sip:bob@192.0.2.7:5062",
    status=200,
    reason="OK",
    start_ms=T0,
    answer_ms=T0 + 2_000,
    proxy="proxy1",
)
FAILED = CallRecord(
    "f1@pbx",
    "from-f",
    "to-f",
    caller='sip:"x, y"@example.com',  # a comma and quotes: CSV must quote them
    caller_shown='sip:"x, y"@example.com',
    callee="sip:+4930123@example.com",
    destination="sip:0030123@gw-a.example.net",
    gateway="gw-a",
    status=486,
    reason="Busy Here",
    start_ms=T0 + 60_000,
    end_ms=T0 + 64_000,
    proxy="proxy2",
)
OPEN = CallRecord(
    "o1@pbx", "from-o", "to-o", status=200, start_ms=T0 + 120_000, answer_ms=T0 + 121_000
)


@pytest.fixture
def calls(db: str) -> str:
    """The `db` fixture's database with three calls, as proxies would write them."""

    async def write() -> None:
        storage = open_storage(db)
        try:
            await storage.accounting.answered(ANSWERED)
            await storage.accounting.ended(
                "a1@pbx", "from-a", "to-a", end_ms=T0 + 63_456, ended_by="callee"
            )
            await storage.accounting.failed(FAILED)
            await storage.accounting.answered(OPEN)
        finally:
            await storage.close()

    asyncio.run(write())
    return db


def test_list_prints_a_table(calls: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = sipfleet(capsys, "cdr", "list", "--db", calls)
    assert (status, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == [
        "START",
        "END",
        "DURATION",
        "STATUS",
        "ENDED-BY",
        "CALLER",
        "CALLEE",
        "DESTINATION",
        "GATEWAY",
        "PROXY",
        "CALL-ID",
    ]
    assert [row.split()[0] for row in rows] == [
        "2024-05-01T12:00:00.000Z",
        "2024-05-01T12:01:00.000Z",
        "2024-05-01T12:02:00.000Z",
    ]
    assert rows[0].split()[1:5] == ["2024-05-01T12:01:03.456Z", "61.456", "200", "callee"]
    assert rows[1].split()[1:5] == ["2024-05-01T12:01:04.000Z", "0.000", "486", "-"]
    assert rows[2].split()[1:5] == ["-", "-", "200", "-"]  # still going on
    # Columns line up under their headings.
    assert rows[0].index("sip:alice@") == header.index("CALLER")


def test_list_filters(calls: str, capsys: pytest.CaptureFixture[str]) -> None:
    def call_ids(*options: str) -> list[str]:
        status, out, _ = sipfleet(capsys, "cdr", "list", "--db", calls, *options)
        assert status == 0
        return [line.split()[-1] for line in out.splitlines()[1:]]

    assert call_ids("--since", "2024-05-01T12:01:00") == ["f1@pbx", "o1@pbx"]
    assert call_ids("--until", "2024-05-01T14:01:00+02:00") == ["a1@pbx"]
    assert call_ids("--since", str((T0 + 60_000) // 1000), "--limit", "1") == ["f1@pbx"]
    assert call_ids("--call-id", "o1@pbx") == ["o1@pbx"]
    status, out, _ = sipfleet(capsys, "cdr", "list", "--db", calls, "--since", "2024-05-02")
    assert (status, out) == (0, "no call records\n")


def test_export_writes_csv(calls: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = sipfleet(capsys, "cdr", "export", "--db", calls)
    assert (status, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [row["call_id"] for row in rows] == ["a1@pbx", "f1@pbx", "o1@pbx"]
    answered, failed, going_on = rows
    assert {k: v for k, v in answered.items() if k != "id"} == {
        "call_id": "a1@pbx",
        "from_tag": "from-a",
        "to_tag": "to-a",
        "caller": "sip:alice@example.com",
        "caller_shown": "sip:anonymous@anonymous.invalid",
        "callee": "sip:bob@example.com",
        "destination": "sip:bob@192.0.2.7:5062",
        "gateway": "",
        "status": "200",
        "reason": "OK",
        "start": "2024-05-01T12:00:00.000Z",
        "answer": "2024-05-01T12:00:02.000Z",
        "end": "2024-05-01T12:01:03.456Z",
        "duration_s": "61.456",
        "ended_by": "callee",
        "proxy": "proxy1",
    }
    assert (failed["caller"], failed["gateway"], failed["duration_s"]) == (
        'sip:"x, y"@example.com',
        "gw-a",
        "0.000",
    )
    assert (going_on["end"], going_on["duration_s"], going_on["ended_by"]) == ("", "", "")

    target = tmp_path / "cdr.csv"
    since = ["--since", "2024-05-01T12:01:00Z"]
    status, out, _ = sipfleet(capsys, "cdr", "export", "--db", calls, *since, "-o", str(target))
    assert (status, out) == (0, f"2 call records written to {target}\n")
    with target.open(newline="") as file:
        assert [row["call_id"] for row in csv.DictReader(file)] == ["f1@pbx", "o1@pbx"]


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_a_bad_time_is_a_usage_error(
    calls: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("list", "export"):
        status, out, err = sipfleet(capsys, "cdr", command, "--db", calls, option, "yesterday")
        assert (status, out) == (2, "")
        assert err.startswith(f"sipfleet: {option}: 'yesterday' is not an ISO 8601 date")
        assert "Traceback" not in err


def test_time_values() -> None:
    assert parse_time("2024-05-01", "--since") == T0 - 12 * 3_600_000
    assert parse_time("2024-05-01T12:00:00", "--since") == T0
    assert parse_time("2024-05-01T14:00:00+02:00", "--since") == T0
    assert parse_time("2024-05-01T12:00:00.250Z", "--since") == T0 + 250
    assert parse_time(" 1714564800 ", "--since") == T0
    assert parse_time("1714564800.5", "--since") == T0 + 500
    for bad in ("", "nan", "inf", "-1", "2024-13-01", "12:00"):
        with pytest.raises(CliError, match="--until") as raised:
            parse_time(bad, "--until")
        assert raised.value.status == 2
    assert format_seconds(61_456) == "61.456"
    assert format_seconds(5) == "0.005"
    assert format_seconds(-1_500) == "-1.500"  # two proxies' clocks apart


def test_on_a_database_without_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path / 'none.db'}"
    status, _, err = sipfleet(capsys, "cdr", "list", "--db", url)
    assert status == 1
    assert "sipfleet db upgrade" in err
