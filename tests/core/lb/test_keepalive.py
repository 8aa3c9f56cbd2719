"""The keepalive table: learned from REGISTER 2xx, pinged evenly, expired (sans-IO)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from sipfleet.core.lb.keepalive import (
    KeepaliveStats,
    KeepaliveTable,
    Learned,
    OptionsPing,
    contact_digest,
    learned,
    ping_answered,
)
from sipfleet.sip import Request, Response, parse_message
from sipfleet.sip.flow import Flow
from tests.core.lb.messages import TOKENS

FLOW = Flow("udp", "198.51.100.7", 40000, 0, 0, True, 7)
TOKEN = TOKENS.encode(FLOW)


def register_ok(contacts: list[str], via_params: str, *, method: str = "REGISTER") -> Response:
    lines = [
        "SIP/2.0 200 OK",
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc{via_params}",
        "Via: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK-ua;rport=40000;received=198.51.100.7",
        "From: <sip:alice@example.com>;tag=1",
        "To: <sip:alice@example.com>;tag=2",
        "Call-ID: reg-1",
        f"CSeq: 2 {method}",
        *[f"Contact: {contact}" for contact in contacts],
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Response)
    return message


def our_via(response: Response) -> str:
    return response.header_values("via")[0]


def test_the_2xx_tells_how_long_this_flows_contact_lives() -> None:
    mine = "sip:alice@10.0.1.2:5060"
    params = f";lbf={TOKEN};lbc={contact_digest(mine)}"
    response = register_ok([f"<{mine}>;expires=300", "<sip:alice@192.0.2.5>;expires=3000"], params)
    news = learned(response, our_via(response), TOKENS)
    assert news == Learned(TOKEN, FLOW, "sip:alice@example.com", 300)  # not the other phone's


def test_a_2xx_without_our_contact_ends_the_registration() -> None:
    params = f";lbf={TOKEN};lbc={contact_digest('sip:alice@10.0.1.2:5060')}"
    response = register_ok(["<sip:alice@192.0.2.5>;expires=3000"], params)
    news = learned(response, our_via(response), TOKENS)
    assert news is not None
    assert news.lifetime == 0


def test_nothing_is_learned_from_a_forged_token_or_another_method() -> None:
    digest = contact_digest("sip:a@b")
    response = register_ok(["<sip:a@b>;expires=60"], f";lbf=AAAAAAAAAAAAAAAAAAAAAAAA;lbc={digest}")
    assert learned(response, our_via(response), TOKENS) is None
    invite = register_ok(["<sip:a@b>"], f";lbf={TOKEN};lbc={digest}", method="INVITE")
    assert learned(invite, our_via(invite), TOKENS) is None


def flow(n: int) -> tuple[str, Flow]:
    made = Flow("udp", "198.51.100.7", 10000 + n, 0, 0, True, 7)
    return TOKENS.encode(made), made


def test_every_flow_is_pinged_once_per_interval_evenly() -> None:
    table = KeepaliveTable(interval=10.0, tick=0.1)  # 100 slots
    for n in range(1000):
        token, made = flow(n)
        table.learn(Learned(token, made, f"sip:u{n}@x", 3600), wall=0.0)
    per_tick = []
    pinged: Counter[int] = Counter()
    for tick in range(100):
        work = table.due(now=tick * 0.1, wall=1.0)
        per_tick.append(len(work.ping))
        pinged.update(kept.id for kept in work.ping)
    assert len(pinged) == 1000
    assert set(pinged.values()) == {1}
    assert min(per_tick) == max(per_tick) == 10


def test_a_late_tick_catches_up_but_never_pings_twice_in_one_call() -> None:
    table = KeepaliveTable(interval=1.0, tick=0.1)
    for n in range(30):
        token, made = flow(n)
        table.learn(Learned(token, made, "sip:a@x", 3600), wall=0.0)
    table.due(now=0.0, wall=1.0)
    work = table.due(now=25.0, wall=1.0)  # the loop stalled for many turns
    assert len(work.ping) == 30
    assert len({k.id for k in work.ping}) == 30


def test_registrations_end_and_expire() -> None:
    table = KeepaliveTable(interval=1.0, tick=0.5)
    table.learn(Learned(TOKEN, FLOW, "sip:a@x", 100), wall=1000.0)
    table.learn(Learned(TOKEN, FLOW, "sip:b@x", 10), wall=1000.0)  # two AORs, one flow
    assert len(table) == 1
    assert table.learn(Learned(TOKEN, FLOW, "sip:a@x", 0), wall=1001.0) is None  # b is left
    work = table.due(now=0.0, wall=1005.0)
    work = table.due(now=0.5, wall=1005.0)
    assert len(table) == 1
    work = table.due(now=1.0, wall=1011.0)
    work = table.due(now=1.5, wall=1011.0)
    assert [k.token for k in work.expired] == [TOKEN]
    assert len(table) == 0
    assert table.stats.expired == 1


def test_the_last_unregister_ends_the_flow() -> None:
    table = KeepaliveTable(interval=1.0)
    table.learn(Learned(TOKEN, FLOW, "sip:a@x", 100), wall=0.0)
    ended = table.learn(Learned(TOKEN, FLOW, "sip:a@x", 0), wall=1.0)
    assert ended is not None
    assert ended.token == TOKEN
    assert len(table) == 0


def test_unanswered_pings_are_counted_once_failing_and_recovery_is_seen() -> None:
    table = KeepaliveTable(interval=1.0, tick=1.0)  # one slot: every tick pings all
    table.learn(Learned(TOKEN, FLOW, "sip:a@x", 3600), wall=0.0)
    (kept,) = table.due(now=0.0, wall=1.0).ping
    assert table.due(now=1.0, wall=1.0).failing == [kept]
    assert table.due(now=2.0, wall=1.0).failing == []  # logged once
    assert (table.stats.misses, table.stats.failing) == (2, 1)
    assert table.answered(kept.id) is kept  # recovered
    assert table.stats.failing == 0
    table.due(now=3.0, wall=1.0)
    assert table.stats.misses == 2


def test_crlf_pings_expect_no_answer() -> None:
    table = KeepaliveTable(interval=1.0, tick=1.0, answers=False)
    table.learn(Learned(TOKEN, FLOW, "sip:a@x", 3600), wall=0.0)
    for second in range(5):
        assert table.due(now=float(second), wall=1.0).failing == []
    assert table.stats.misses == 0


def test_restored_flows_give_way_to_what_the_lb_learns() -> None:
    table = KeepaliveTable(interval=1.0)
    table.restore(TOKEN, FLOW, 5000.0)
    table.learn(Learned(TOKEN, FLOW, "sip:a@x", 100), wall=1000.0)
    assert table.by_token[TOKEN].registrations == {"sip:a@x": 1100.0}


def test_options_ping_is_a_request_whose_answer_names_its_flow() -> None:
    table = KeepaliveTable(interval=1.0)
    table.learn(Learned(TOKEN, FLOW, "sip:a@x", 100), wall=0.0)
    kept = table.by_token[TOKEN]
    ping = parse_message(OptionsPing(3, "lbk-x", "t").build(kept, "203.0.113.10:5060"))
    assert isinstance(ping, Request)
    assert (ping.method, ping.uri_text) == ("OPTIONS", "sip:198.51.100.7:40000")
    assert (ping.top_via.host, ping.top_via.port) == ("203.0.113.10", 5060)
    assert ping_answered(ping.header_values("via")[0]) == (3, kept.id)
    assert ping_answered("SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK-other") is None


def test_every_keepalive_count_is_reported() -> None:
    stats = KeepaliveStats(flows=1, pings_sent=2, answers=3, misses=4, lost=5)
    named = {field.name: getattr(stats, field.name) for field in dataclasses.fields(stats)}
    assert stats.counters() == named
