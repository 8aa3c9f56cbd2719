"""The TTL cache: answers kept for their TTL, negative ones too, bounded in size."""

from __future__ import annotations

from sipfleet.dns.records import Answer, Query, RecordCache, Srv, domain

A = Query("gw1.example", "A")


def test_an_answer_is_kept_until_its_ttl_runs_out() -> None:
    cache = RecordCache()
    cache.put(A, Answer(("192.0.2.1",), ttl=30), now=100.0)
    assert cache.get(A, 129.9) == Answer(("192.0.2.1",), 30)
    assert cache.get(A, 130.0) is None
    assert len(cache) == 0  # an expired answer is dropped when met


def test_a_negative_answer_is_cached_as_such() -> None:
    cache = RecordCache()
    missing = Query("nothing.example", "NAPTR")
    cache.put(missing, Answer((), ttl=5, exists=False), now=0.0)
    answer = cache.get(missing, 4.0)
    assert answer is not None
    assert answer.records == ()
    assert not answer.exists


def test_ttl_zero_is_never_kept() -> None:
    cache = RecordCache()
    cache.put(A, Answer(("192.0.2.1",), ttl=0), now=0.0)
    assert cache.get(A, 0.0) is None


def test_the_least_recently_used_go_first_past_the_bound() -> None:
    cache = RecordCache(max_entries=2)
    srv = Query("_sip._udp.example", "SRV")
    cache.put(A, Answer(("192.0.2.1",), 60), 0.0)
    cache.put(srv, Answer((Srv(0, 0, 5060, "gw1.example"),), 60), 0.0)
    cache.get(A, 1.0)  # used: srv is now the oldest
    cache.put(Query("gw2.example", "A"), Answer(("192.0.2.2",), 60), 1.0)
    assert len(cache) == 2
    assert cache.get(srv, 2.0) is None
    assert cache.get(A, 2.0) is not None


def test_names_are_keyed_without_case_or_final_dot() -> None:
    assert domain("GW1.Example.") == "gw1.example"
