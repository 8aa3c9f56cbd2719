"""`sipfleet cdr list|export`: the call records the proxies write (table ``acc``).

Times are shown in ISO 8601 UTC with milliseconds, durations in seconds with three
decimals. Records are read from the primary, like every CLI read: a bill wants every
record that was written.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sipfleet.cli.common import CliError, add_db_option
from sipfleet.cli.db import with_storage
from sipfleet.config import Config
from sipfleet.storage import CallRecord, Storage

TIME_HELP = "an ISO 8601 date or date-time (UTC unless it names a zone), or unix seconds"
# A plain number is unix seconds (20240501 too: not read as an ISO basic date).
UNIX_SECONDS = re.compile(r"\d+(\.\d+)?")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cdr", help="call records (accounting)")
    commands = parser.add_subparsers(dest="cdr_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="call records as a table, oldest first")
    _add_window(listing)
    listing.add_argument("--call-id", metavar="ID", help="only the legs of this Call-ID")
    listing.add_argument("--limit", metavar="N", type=int, help="at most N records")
    listing.set_defaults(handler=list_command)
    export = commands.add_parser("export", help="call records as CSV, oldest first")
    _add_window(export)
    export.add_argument("-o", "--output", metavar="FILE", type=Path, help="default: stdout")
    export.set_defaults(handler=export_command)
    for sub in (listing, export):
        add_db_option(sub)


def _add_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="TIME", help=f"calls started at or after: {TIME_HELP}")
    parser.add_argument("--until", metavar="TIME", help=f"calls started before: {TIME_HELP}")


# --- times ----------------------------------------------------------------------------


def parse_time(text: str, option: str) -> int:
    """Unix milliseconds of an ISO 8601 date or date-time (UTC when it has no zone) or of
    unix seconds. A bad value is a usage error (status 2) naming the option."""
    stripped = text.strip()
    if UNIX_SECONDS.fullmatch(stripped):
        return round(float(stripped) * 1000)
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise CliError(f"{option}: {text!r} is not {TIME_HELP}", status=2) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def format_time(ms: int | None) -> str:
    if ms is None:
        return ""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_seconds(ms: int | None) -> str:
    """Milliseconds as seconds with three decimals, exactly (no float rounding)."""
    if ms is None:
        return ""
    sign = "-" if ms < 0 else ""
    whole, part = divmod(abs(ms), 1000)
    return f"{sign}{whole}.{part:03d}"


# --- reading --------------------------------------------------------------------------


def _records(args: argparse.Namespace, call_id: str | None, limit: int | None) -> list[CallRecord]:
    since = parse_time(args.since, "--since") if args.since is not None else None
    until = parse_time(args.until, "--until") if args.until is not None else None
    if limit is not None and limit < 1:
        raise CliError(f"--limit: {limit} is not a positive number", status=2)

    async def read(storage: Storage, config: Config) -> list[CallRecord]:
        return await storage.accounting.list(
            since_ms=since, until_ms=until, call_id=call_id, limit=limit
        )

    return with_storage(args, read)


# --- list -----------------------------------------------------------------------------

# The table's columns: heading, and the text of a record's value (empty: unknown yet).
TABLE: Sequence[tuple[str, Callable[[CallRecord], str]]] = (
    ("START", lambda r: format_time(r.start_ms)),
    ("END", lambda r: format_time(r.end_ms)),
    ("DURATION", lambda r: format_seconds(r.duration_ms)),
    ("STATUS", lambda r: "" if r.status is None else str(r.status)),
    ("ENDED-BY", lambda r: r.ended_by or ""),
    ("CALLER", lambda r: r.caller or ""),
    ("CALLEE", lambda r: r.callee or ""),
    ("DESTINATION", lambda r: r.destination or ""),
    ("GATEWAY", lambda r: r.gateway or ""),
    ("PROXY", lambda r: r.proxy or ""),
    ("CALL-ID", lambda r: r.call_id),
)


def table(records: Sequence[CallRecord]) -> list[str]:
    """Aligned columns; '-' where a value is not known (yet)."""
    rows = [[heading for heading, _ in TABLE]]
    rows += [[text(record) or "-" for _, text in TABLE] for record in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def list_command(args: argparse.Namespace) -> int:
    records = _records(args, args.call_id, args.limit)
    if not records:
        print("no call records")
        return 0
    for line in table(records):
        print(line)
    return 0


# --- export ---------------------------------------------------------------------------

# Every column of acc; times as ISO 8601 UTC, the duration in seconds.
CSV_COLUMNS: Sequence[tuple[str, Callable[[CallRecord], object]]] = (
    ("id", lambda r: r.id),
    ("call_id", lambda r: r.call_id),
    ("from_tag", lambda r: r.from_tag),
    ("to_tag", lambda r: r.to_tag),
    ("caller", lambda r: r.caller),
    ("caller_shown", lambda r: r.caller_shown),
    ("callee", lambda r: r.callee),
    ("destination", lambda r: r.destination),
    ("gateway", lambda r: r.gateway),
    ("status", lambda r: r.status),
    ("reason", lambda r: r.reason),
    ("start", lambda r: format_time(r.start_ms)),
    ("answer", lambda r: format_time(r.answer_ms)),
    ("end", lambda r: format_time(r.end_ms)),
    ("duration_s", lambda r: format_seconds(r.duration_ms)),
    ("ended_by", lambda r: r.ended_by),
    ("proxy", lambda r: r.proxy),
)


def write_csv(records: Sequence[CallRecord], out: TextIO) -> None:
    """A header row, then one row per record; an unknown value is an empty field."""
    writer = csv.writer(out)
    writer.writerow([name for name, _ in CSV_COLUMNS])
    for record in records:
        writer.writerow(["" if (v := value(record)) is None else v for _, value in CSV_COLUMNS])


def export_command(args: argparse.Namespace) -> int:
    records = _records(args, None, None)
    if args.output is None:
        write_csv(records, sys.stdout)
        return 0
    try:
        with args.output.open("w", newline="", encoding="utf-8") as out:
            write_csv(records, out)
    except OSError as exc:
        raise CliError(f"--output: {exc.strerror or exc}: {args.output}") from None
    print(f"{len(records)} call record{'s' if len(records) != 1 else ''} written to {args.output}")
    return 0
