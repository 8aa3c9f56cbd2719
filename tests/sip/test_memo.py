"""The bounded memo behind every packet-fed table (sip/memo.py)."""

from __future__ import annotations

import pytest

from sipfleet.sip import builders, headers, message, parser, via
from sipfleet.sip.memo import Memo


def test_a_hit_returns_the_stored_value() -> None:
    memo = Memo[str, int](8)
    assert memo.table.get("Content-Length: 0") is None
    assert memo.put("Content-Length: 0", 0) == 0
    assert memo.put("l: 12", 12) == 12
    assert memo.table.get("Content-Length: 0") == 0
    assert memo.table.get("l: 12") == 12
    assert len(memo) == 2


def test_a_flood_of_unique_keys_stays_within_the_limit() -> None:
    memo = Memo[str, int](100)
    for n in range(10_000):
        memo.put(f"Via: SIP/2.0/UDP 10.{n}.0.1", n)
        assert len(memo) <= 100
    # The last stored is there: a clear makes room, it never refuses (real traffic's keys
    # come back at their next miss).
    assert memo.table.get("Via: SIP/2.0/UDP 10.9999.0.1") == 9999


def test_full_means_cleared_then_stored() -> None:
    memo = Memo[int, int](3)
    for n in range(3):
        memo.put(n, n)
    memo.put(3, 3)
    assert memo.table == {3: 3}


def test_the_seed_survives_a_flood() -> None:
    memo = Memo[str, str](10, {"call-id": "Call-ID", "cseq": "CSeq"})
    assert memo.table.get("cseq") == "CSeq"
    for n in range(1000):
        memo.put(f"x-{n}", f"X-{n}")
        assert len(memo) <= 10
        assert memo.table.get("call-id") == "Call-ID"
        assert memo.table.get("cseq") == "CSeq"


def test_the_seed_must_leave_room() -> None:
    with pytest.raises(ValueError, match="room"):
        Memo[int, int](2, {1: 1, 2: 2})


def test_header_names_from_a_flood_stay_bounded_and_spelt_right() -> None:
    """The module tables that packets feed are memos: a flood of made-up header names
    neither grows them past their limit nor loses the spellings written by hand."""
    limit = headers.HEADER_KEYS.limit
    for n in range(limit + 10):
        assert headers.header_key(f"X-Flood-{n}") == f"x-flood-{n}"
        headers.spelling(f"x-flood-{n}")
    assert len(headers.HEADER_KEYS) <= limit
    assert headers.header_key("Via") == "via"
    assert headers.spelling("call-id") == "Call-ID"
    assert headers.spelling("www-authenticate") == "WWW-Authenticate"


@pytest.mark.parametrize(
    "memo",
    [
        headers.HEADER_KEYS,
        parser._STATUS_LINES,
        parser._CONTENT_LENGTHS,
        message._HOP_COUNTS,
        via._SENT_BYS,
        builders._SENDER_TAGS,
    ],
)
def test_every_packet_fed_table_is_a_memo(memo: object) -> None:
    assert isinstance(memo, Memo)
