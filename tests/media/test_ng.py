"""The ng protocol object: commands out, replies in, by cookie; no sockets, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipfleet.media import bencode, ng
from sipfleet.media.errors import NgError

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\n"
    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)


def body_of(datagram: bytes) -> object:
    _, _, payload = datagram.partition(b" ")
    return bencode.decode(payload)


def reply(cookie: bytes, **body: bencode.Encodable) -> bytes:
    return cookie + b" " + bencode.encode(body)


def test_offer_carries_the_dialog_sdp_and_our_options() -> None:
    command = ng.offer(call_id="c1", from_tag="f1", sdp=SDP, received_from="203.0.113.9")
    assert body_of(ng.NgConnection("p").send(command).datagram) == {
        b"command": b"offer",
        b"call-id": b"c1",
        b"from-tag": b"f1",
        b"sdp": SDP,
        b"replace": [b"origin", b"session-connection"],
        b"ICE": b"remove",
        b"received-from": [b"IP4", b"203.0.113.9"],
    }


def test_answer_has_the_to_tag_and_an_ipv6_source_without_brackets() -> None:
    command = ng.answer(call_id="c1", from_tag="f1", to_tag="t1", sdp=SDP, received_from="[::1]")
    body = body_of(ng.NgConnection("p").send(command).datagram)
    assert isinstance(body, dict)
    assert body[b"to-tag"] == b"t1"
    assert body[b"received-from"] == [b"IP6", b"::1"]


def test_offer_without_source_or_flags_sends_neither() -> None:
    body = body_of(ng.NgConnection("p").send(ng.offer(call_id="c", from_tag="f", sdp=SDP)).datagram)
    assert isinstance(body, dict)
    assert b"received-from" not in body
    assert b"flags" not in body
    assert b"to-tag" not in body


def test_delete_and_query_name_the_call() -> None:
    connection = ng.NgConnection("p")
    delete = connection.send(ng.delete(call_id="c9"))
    assert body_of(delete.datagram) == {b"command": b"delete", b"call-id": b"c9"}
    query = connection.send(ng.query(call_id="c9", from_tag="f"))
    assert body_of(query.datagram) == {b"command": b"query", b"call-id": b"c9", b"from-tag": b"f"}


def test_cookies_are_unique_and_prefixed_at_random() -> None:
    connection = ng.NgConnection()
    cookies = {connection.send(ng.ping()).cookie for _ in range(100)}
    assert len(cookies) == 100
    assert all(b" " not in cookie for cookie in cookies)
    other = ng.NgConnection().send(ng.ping()).cookie
    assert other.split(b"_")[0] != next(iter(cookies)).split(b"_")[0]


def test_datagram_is_cookie_space_dictionary() -> None:
    transmit = ng.NgConnection("abc").send(ng.ping())
    assert transmit.datagram == transmit.cookie + b" d7:command4:pinge"
    assert transmit.cookie.startswith(b"abc_")


def test_a_reply_completes_its_command() -> None:
    connection = ng.NgConnection("p")
    sent = connection.send(ng.offer(call_id="c", from_tag="f", sdp=SDP))
    assert connection.in_flight == 1
    outcome = connection.receive(reply(sent.cookie, result="ok", sdp=b"v=0 new"))
    assert isinstance(outcome, ng.Reply)
    assert outcome.command == "offer"
    assert outcome.sdp() == b"v=0 new"
    assert connection.in_flight == 0


def test_replies_are_matched_by_cookie_in_any_order() -> None:
    connection = ng.NgConnection("p")
    first = connection.send(ng.ping())
    second = connection.send(ng.delete(call_id="c"))
    answered = connection.receive(reply(second.cookie, result="ok", warning="odd"))
    assert isinstance(answered, ng.Reply)
    assert (answered.command, answered.warning) == ("delete", "odd")
    pong = connection.receive(reply(first.cookie, result="pong"))
    assert isinstance(pong, ng.Reply)
    assert pong.command == "ping"


def test_an_error_reply_is_a_failure_naming_the_reason() -> None:
    connection = ng.NgConnection("p")
    sent = connection.send(ng.answer(call_id="x", from_tag="f", to_tag="t", sdp=SDP))
    outcome = connection.receive(
        reply(sent.cookie, result="error", **{"error-reason": "Unknown call-id"})
    )
    assert outcome == ng.Failure(sent.cookie, "answer", "Unknown call-id")
    assert ng.is_unknown_call(outcome.reason)
    assert ng.is_unknown_call("Unknown call-ID")
    assert not ng.is_unknown_call("Incomplete SDP specification")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"result": "error"}, "result error"),
        ({"result": "load limit", "message": "busy"}, "result load limit"),
        ({"result": "pong"}, "result pong"),  # pong answers only a ping
    ],
)
def test_other_results_are_failures(body: dict[str, bencode.Encodable], reason: str) -> None:
    connection = ng.NgConnection("p")
    sent = connection.send(ng.offer(call_id="c", from_tag="f", sdp=SDP))
    assert connection.receive(reply(sent.cookie, **body)) == ng.Failure(
        sent.cookie, "offer", reason
    )


@pytest.mark.parametrize("payload", [b"garbage", b"le", b"d3:sdp1:xe", b"d6:resulti1ee"])
def test_a_malformed_reply_fails_its_command(payload: bytes) -> None:
    connection = ng.NgConnection("p")
    sent = connection.send(ng.ping())
    outcome = connection.receive(sent.cookie + b" " + payload)
    assert isinstance(outcome, ng.Failure)
    assert outcome.reason.startswith("malformed reply")
    assert connection.in_flight == 0


def test_unknown_late_and_duplicate_replies_are_ignored() -> None:
    connection = ng.NgConnection("p")
    sent = connection.send(ng.ping())
    assert connection.receive(reply(b"p_999", result="pong")) is None  # never sent
    assert connection.receive(b"no-space-at-all") is None
    assert connection.receive(reply(sent.cookie, result="pong")) is not None
    assert connection.receive(reply(sent.cookie, result="pong")) is None  # duplicate
    expired = connection.send(ng.ping())
    assert connection.forget(expired.cookie)
    assert not connection.forget(expired.cookie)
    assert connection.receive(reply(expired.cookie, result="pong")) is None  # late
    assert connection.ignored == 4


def test_retransmit_gives_the_same_datagram_until_answered() -> None:
    connection = ng.NgConnection("p")
    sent = connection.send(ng.offer(call_id="c", from_tag="f", sdp=SDP))
    assert connection.retransmit(sent.cookie) == sent.datagram
    connection.receive(reply(sent.cookie, result="ok", sdp=b"v=0"))
    assert connection.retransmit(sent.cookie) is None


def test_a_reply_without_sdp_has_none_to_give() -> None:
    with pytest.raises(NgError, match="offer reply without an SDP"):
        ng.Reply(b"c", "offer", {b"result": b"ok"}).sdp()


@pytest.mark.parametrize(
    ("timeout", "interval", "delays"),
    [
        (1.0, 0.25, [0.25, 0.25, 0.25, 0.25]),
        (1.0, 0.4, [0.4, 0.4, 0.2]),
        (1.0, 2.0, [1.0]),
    ],
)
def test_retransmit_delays_add_up_to_the_timeout(
    timeout: float, interval: float, delays: list[float]
) -> None:
    assert ng.retransmit_delays(timeout, interval) == pytest.approx(delays)


def test_retransmit_delays_need_positive_times() -> None:
    with pytest.raises(ValueError, match="positive"):
        ng.retransmit_delays(0, 0.25)


def test_a_cookie_prefix_with_a_space_is_refused() -> None:
    with pytest.raises(ValueError, match="space"):
        ng.NgConnection("a b")


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_receive_never_raises(tail: bytes) -> None:
    connection = ng.NgConnection("p")
    sent = connection.send(ng.ping())
    assert connection.receive(tail) is None or connection.in_flight == 0
    outcome = connection.receive(sent.cookie + b" " + tail)
    assert outcome is None or isinstance(outcome, ng.Reply | ng.Failure)
