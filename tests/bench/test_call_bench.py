"""bench/call_bench.py: why sipp says calls failed, from its -error_file."""

from __future__ import annotations

from pathlib import Path

from bench.call_bench import why_failed

STAMP = "2026-12-05\t08:12:17.{n}\t1796458337.{n}: "


def event(n: int, text: str) -> str:
    return STAMP.format(n=f"{n:06d}") + text


def test_reasons_are_counted_one_line_each(tmp_path: Path) -> None:
    # sipp writes the events back to back (a timeout's line has no newline at its end)
    # and quotes the whole message that came instead, over several lines
    log = tmp_path / "errors.log"
    log.write_text(
        "The following events occurred:\n"
        + event(1, "Call-Id: 7-1011@127.0.0.1, receive timeout on message call, index:2")
        + event(2, "Call-Id: 8-1011@127.0.0.1, receive timeout on message call, index:2")
        + event(3, "Dead call 7-1011@127.0.0.1 (aborted at index 2), received 'SIP/2.0 487 "
                   "Request Terminated\nVia: SIP/2.0/UDP 127.0.0.1\nCSeq: 1 INVITE\n\n'")
    )  # fmt: skip
    assert why_failed(log) == [
        (2, "Call-Id: … receive timeout on message call, index:N"),
        (1, "Dead call … (aborted at index N), received 'SIP/2.0 487 Request Terminated'"),
    ]


def test_no_file_no_reasons(tmp_path: Path) -> None:
    assert why_failed(tmp_path / "missing.log") == []
