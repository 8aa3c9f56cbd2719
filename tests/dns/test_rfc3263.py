"""RFC 3263 §4 with records from a dict: no sockets, no clock."""

from __future__ import annotations

import random

import pytest

from sipfleet.dns.records import Answer, Naptr, Query, Srv
from sipfleet.dns.rfc3263 import DnsError, Located, Need, Target, locate, srv_order
from sipfleet.sip.uri import SipUri, parse_uri
from sipfleet.transport.base import Destination


def first(total: int) -> int:
    return 0  # the first record of its priority with a weight, in list order


def uri(text: str) -> SipUri:
    parsed = parse_uri(text)
    assert isinstance(parsed, SipUri)
    return parsed


def run(text: str, answers: dict[Query, Answer], pick=first) -> list[Destination]:  # type: ignore[no-untyped-def]
    """Answer every Need from ``answers`` (an unknown query: a negative answer)."""
    asked: list[Query] = []
    for _ in range(4):
        result = locate(
            Target.of(uri(text)), lambda q: answers.get(q) if q in asked else None, pick
        )
        if not isinstance(result, Need):
            return [each.destination for each in result]
        for query in result.queries:
            answers.setdefault(query, Answer((), 60))
            asked.append(query)
    raise AssertionError("did not settle")


CARRIER = {
    Query("carrier.example", "NAPTR"): Answer(
        (
            Naptr(20, 10, "s", "SIP+D2T", "_sip._tcp.carrier.example"),
            Naptr(10, 10, "s", "SIP+D2U", "_sip._udp.carrier.example"),
            Naptr(5, 10, "s", "SIPS+D2T", "_sips._tcp.carrier.example"),  # no TLS here
        ),
        300,
    ),
    Query("_sip._udp.carrier.example", "SRV"): Answer(
        (Srv(20, 0, 5070, "gw2.carrier.example"), Srv(10, 0, 5060, "gw1.carrier.example")), 300
    ),
    Query("_sip._tcp.carrier.example", "SRV"): Answer(
        (Srv(10, 0, 5080, "gw1.carrier.example"),), 300
    ),
    Query("gw1.carrier.example", "A"): Answer(("192.0.2.1",), 300),
    Query("gw2.carrier.example", "A"): Answer(("192.0.2.2",), 300),
    Query("gw2.carrier.example", "AAAA"): Answer(("2001:db8::2",), 300),
}


def test_naptr_then_srv_then_addresses_in_order_then_priority() -> None:
    assert run("sip:+4930123@carrier.example", dict(CARRIER)) == [
        Destination("udp", "192.0.2.1", 5060),
        Destination("udp", "192.0.2.2", 5070),
        Destination("udp", "2001:db8::2", 5070),
        Destination("tcp", "192.0.2.1", 5080),
    ]


def test_each_step_asks_only_what_it_needs_all_at_once() -> None:
    target = Target.of(uri("sip:carrier.example"))
    known: dict[Query, Answer] = {}
    steps = []
    for _ in range(3):
        result = locate(target, known.get, first)
        assert isinstance(result, Need)
        steps.append(result.queries)
        known.update({q: CARRIER.get(q, Answer((), 60)) for q in result.queries})
    assert steps[0] == (Query("carrier.example", "NAPTR"),)
    assert steps[1] == (
        Query("_sip._udp.carrier.example", "SRV"),
        Query("_sip._tcp.carrier.example", "SRV"),
    )
    assert set(steps[2]) == {
        Query(f"gw{n}.carrier.example", k) for n in (1, 2) for k in ("A", "AAAA")
    }
    assert isinstance(locate(target, known.get, first), list)


def test_a_numeric_host_is_not_looked_up() -> None:
    nothing: dict[Query, Answer] = {}
    result = locate(Target.of(uri("sip:192.0.2.9;transport=tcp")), nothing.get, first)
    assert result == [Located(Destination("tcp", "192.0.2.9", 5060))]


def test_an_explicit_port_means_addresses_only() -> None:
    answers = {Query("gw1.carrier.example", "A"): Answer(("192.0.2.1",), 60)}
    assert run("sip:gw1.carrier.example:5090", answers) == [Destination("udp", "192.0.2.1", 5090)]
    assert not any(q.type in ("NAPTR", "SRV") for q in answers)


def test_an_explicit_transport_means_srv_for_it_without_naptr() -> None:
    answers = dict(CARRIER)
    del answers[Query("carrier.example", "NAPTR")]
    found = run("sip:carrier.example;transport=tcp", answers)
    assert found == [Destination("tcp", "192.0.2.1", 5080)]
    assert Query("carrier.example", "NAPTR") not in answers


def test_without_naptr_srv_for_each_transport_udp_first() -> None:
    answers = dict(CARRIER)
    answers[Query("carrier.example", "NAPTR")] = Answer((), 60)
    found = run("sip:carrier.example", answers)
    assert found[0] == Destination("udp", "192.0.2.1", 5060)
    assert found[-1] == Destination("tcp", "192.0.2.1", 5080)


def test_without_srv_the_host_itself_on_5060() -> None:
    answers = {Query("pbx.example", "AAAA"): Answer(("2001:db8::7",), 60)}
    assert run("sip:pbx.example", answers) == [Destination("udp", "2001:db8::7", 5060)]


def test_naptr_for_other_services_or_flags_is_ignored() -> None:
    answers = {
        Query("pbx.example", "NAPTR"): Answer(
            (
                Naptr(10, 10, "u", "E2U+sip", "!^.*$!sip:x@y!"),
                Naptr(10, 20, "s", "SIP+D2W", "_sip._ws.pbx.example"),
            ),
            60,
        ),
        Query("pbx.example", "A"): Answer(("192.0.2.7",), 60),
    }
    assert run("sip:pbx.example", answers) == [Destination("udp", "192.0.2.7", 5060)]


def test_srv_target_root_means_no_sip_service() -> None:
    answers = {Query("_sip._udp.nosip.example", "SRV"): Answer((Srv(0, 0, 0, ""),), 60)}
    with pytest.raises(DnsError) as caught:
        run("sip:nosip.example", answers)
    assert caught.value.status == 404
    assert "nosip.example" in caught.value.reason


def test_a_name_that_does_not_exist_is_named_in_the_error() -> None:
    answers = {
        Query("nowhere.example", kind): Answer((), 60, exists=False)
        for kind in ("NAPTR", "A", "AAAA")
    }
    with pytest.raises(DnsError) as caught:
        run("sip:nowhere.example", answers)
    assert (caught.value.status, caught.value.reason) == (
        404,
        "nowhere.example does not exist in DNS",
    )


def test_sips_needs_tls() -> None:
    with pytest.raises(DnsError) as caught:
        Target.of(uri("sips:carrier.example"))
    assert caught.value.status == 416


def test_sips_takes_only_sips_naptr_and_srv_when_tls_is_offered() -> None:
    answers = dict(CARRIER)
    answers[Query("_sips._tcp.carrier.example", "SRV")] = Answer(
        (Srv(0, 0, 5061, "gw2.carrier.example"),), 60
    )
    target = Target.of(uri("sips:carrier.example"), ("udp", "tcp", "tls"))
    known: dict[Query, Answer] = {}
    for _ in range(4):
        result = locate(target, known.get, first, ("udp", "tcp", "tls"))
        if not isinstance(result, Need):
            break
        known.update({q: answers.get(q, Answer((), 60)) for q in result.queries})
    assert isinstance(result, list)
    assert {each.destination.transport for each in result} == {"tls"}
    assert result[0].destination == Destination("tls", "192.0.2.2", 5061)


def test_srv_priority_first_then_weight_per_rfc_2782() -> None:
    records = [
        Srv(10, 60, 5060, "a"),
        Srv(10, 40, 5060, "b"),
        Srv(10, 0, 5060, "z"),
        Srv(5, 0, 5060, "p"),
    ]
    assert [r.target for r in srv_order(records, lambda total: 0)] == ["p", "z", "a", "b"]
    assert [r.target for r in srv_order(records, lambda total: total)] == ["p", "b", "a", "z"]


def test_srv_weights_spread_first_choices_per_weight() -> None:
    records = [Srv(10, 75, 5060, "a"), Srv(10, 25, 5060, "b")]
    rng = random.Random(7)
    firsts = [
        srv_order(records, lambda total: rng.randint(0, total))[0].target for _ in range(4000)
    ]
    assert 0.70 < firsts.count("a") / len(firsts) < 0.80
