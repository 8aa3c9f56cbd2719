"""The registrar's answer cache (core/answered.py): no sockets, no clock (``now`` passed in)."""

from __future__ import annotations

import tracemalloc

import pytest

from sipfleet.core.answered import AnsweredRequests, Seen, request_key
from sipfleet.sip import Request, parse_message

T0 = 1000.0


def register(branch: str = "z9hG4bK-1", host: str = "192.0.2.10", port: int = 5060) -> Request:
    text = (
        "REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch={branch}\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
        "Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    return request


def served(cache: AnsweredRequests, key: str, now: float, *, spent: bool = False) -> bytes:
    assert cache.begin(key, now) is Seen.NEW
    answer = f"SIP/2.0 200 OK ({key})".encode()
    cache.finish(key, answer, now, spent=spent)
    return answer


def test_the_key_is_branch_sent_by_and_method_in_one_string() -> None:
    assert request_key(register()) == "z9hG4bK-1 192.0.2.10:5060 REGISTER"
    assert request_key(register(port=5070)) != request_key(register())
    assert request_key(register(branch="old-style")) is None  # no RFC 3261 magic cookie


def test_a_copy_of_one_in_progress_is_absorbed_then_answered_from_what_was_sent() -> None:
    cache = AnsweredRequests()
    assert cache.begin("a", T0) is Seen.NEW
    assert cache.begin("a", T0 + 0.5) is Seen.IN_PROGRESS
    cache.finish("a", b"SIP/2.0 401 Unauthorized", T0 + 0.6)
    assert cache.in_progress == 0
    assert cache.begin("a", T0 + 1.5) == b"SIP/2.0 401 Unauthorized"


def test_an_ordinary_answer_is_kept_briefly() -> None:
    cache = AnsweredRequests(brief=4.0)
    answer = served(cache, "a", T0)
    assert cache.begin("a", T0 + 4.0) == answer
    assert cache.begin("a", T0 + 5.0) is Seen.NEW  # worked on again: same outcome
    assert cache.kept == (0, 0)


def test_an_answer_whose_nonce_count_is_spent_is_kept_for_the_whole_window() -> None:
    cache = AnsweredRequests(brief=4.0, window=32.0)
    answer = served(cache, "a", T0, spent=True)
    for later in (5.0, 8.5, 20.0, 32.0):
        assert cache.begin("a", T0 + later) == answer
    assert cache.begin("a", T0 + 33.0) is Seen.NEW
    assert cache.kept == (0, 0)


def test_no_count_of_other_answers_pushes_a_kept_one_out() -> None:
    """The failure this replaces: a 20,000-entry cache cycled in 2.5 s at twice the
    sustainable rate, and copies of served REGISTERs got a false 401."""
    cache = AnsweredRequests()
    answer = served(cache, "mine", T0, spent=True)
    for i in range(100_000):  # 10 s at 10,000 answers a second, half of them spent
        served(cache, f"other-{i}", T0 + i / 10_000, spent=i % 2 == 0)
    assert cache.begin("mine", T0 + 10.0) == answer
    brief, kept = cache.kept
    assert brief < 5.0 * 5_000 + 5_000  # the brief tier holds its last ~5 s only
    assert kept == 50_001


def test_the_capacity_drops_the_oldest_second_first() -> None:
    cache = AnsweredRequests(window_capacity=3)
    served(cache, "old", T0, spent=True)
    served(cache, "new-1", T0 + 1, spent=True)
    served(cache, "new-2", T0 + 2, spent=True)
    served(cache, "new-3", T0 + 2.5, spent=True)
    assert cache.begin("old", T0 + 3) is Seen.NEW
    assert isinstance(cache.begin("new-1", T0 + 3), bytes)
    assert cache.kept == (0, 3)


def test_an_answer_sent_before_the_nonce_count_was_spent_moves_to_the_window() -> None:
    cache = AnsweredRequests(brief=4.0, window=32.0)
    answer = served(cache, "late", T0)  # 503 at the deadline; the write went on
    cache.spent("late", T0 + 1.5)  # then its credentials were accepted
    assert cache.begin("late", T0 + 20.0) == answer
    cache.spent("never-answered", T0)  # nothing to move: nothing happens
    assert cache.kept == (0, 1)


def test_a_dropped_request_is_forgotten() -> None:
    cache = AnsweredRequests()
    assert cache.begin("a", T0) is Seen.NEW
    cache.finish("a", None, T0)
    assert cache.begin("a", T0 + 0.1) is Seen.NEW


@pytest.mark.parametrize("size", [450, 800])
def test_an_entry_costs_its_answer_and_under_200_bytes_more(size: int) -> None:
    """The bound docs/operations.md states: the answer's bytes and ~180 bytes (the key's
    string ~115, the bytes object's header 33, the dict and list slots ~30)."""
    cache = AnsweredRequests()
    entries = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(entries):
            key = f"z9hG4bK-lb-{i:032x} 127.0.0.1:5070 REGISTER"  # an LB's branch
            cache.begin(key, T0)
            cache.finish(key, b"%08d" % i + bytes(size - 8), T0 + i / 10_000, spent=True)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.kept == (0, entries)
    assert used / entries < size + 200
