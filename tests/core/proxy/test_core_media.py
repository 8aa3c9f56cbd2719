"""The proxy core's side of the media relay and of call records, on the fake clock: what
goes to the relay and when, the order of answers that wait for it, the relay's name in
our Record-Route, the end of a failed call's media, and each INVITE's result."""

from __future__ import annotations

from typing import TypeVar

from sipfleet.core.proxy.actions import CallResult, EndMedia, ForwardAck, RelayMedia
from sipfleet.core.proxy.media import RELAY_PARAM, relay_of
from sipfleet.sip import Request, Response, SipUri
from sipfleet.sip.message import Message
from sipfleet.sip.uri import parse_uri
from tests.core.proxy.harness import T1, TIMER_C, FakeShell
from tests.core.proxy.messages import request, response_to
from tests.core.proxy.test_core import BOB, CALLEE

A = TypeVar("A")
RELAY = "127.0.0.1:2223"
CALLER_SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)
CALLEE_SDP = CALLER_SDP.replace(b"10.0.1.2", b"10.0.2.2")
RELAYED_SDP = CALLER_SDP.replace(b"10.0.1.2", b"203.0.113.10")


def with_sdp(message: Message, sdp: bytes = CALLER_SDP) -> Message:
    message.set_body(sdp, "application/sdp")
    return message


def relayed_call(shell: FakeShell, relay: str | None = RELAY) -> Request:
    """A caller's INVITE with SDP whose shell chose ``relay``; returns the copy sent."""
    shell.receive(with_sdp(request()))
    shell.upstream()
    shell.asked[0].context.media_relay = relay  # as MediaControl.prepare does
    shell.route(BOB)
    (forwarded,) = shell.downstream("INVITE")
    return forwarded


def taken(shell: FakeShell, kind: type[A]) -> list[A]:
    found: list[A] = []
    kept = []
    for action in shell.other:
        if isinstance(action, kind):
            found.append(action)
        else:
            kept.append(action)
    shell.other = kept
    return found


def results(shell: FakeShell) -> list[CallResult]:
    found, shell.results = shell.results, []
    return found


def answered_by_relay(shell: FakeShell, step: RelayMedia, sdp: bytes | None) -> None:
    shell.run(shell.core.media_rewritten(step.call, step.response, sdp))


def test_our_record_route_names_the_relay_and_a_request_by_it_finds_it() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    (record_route,) = forwarded.header_values("record-route")
    assert f";{RELAY_PARAM}={RELAY}" in record_route
    uri = parse_uri(record_route.strip("<>"))
    assert isinstance(uri, SipUri)
    assert relay_of(uri) == RELAY
    assert shell.core.dialog_tokens.verify(uri, forwarded)  # the token still holds


def test_an_unrelayed_call_has_no_relay_in_its_record_route() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell, relay=None)
    (record_route,) = forwarded.header_values("record-route")
    assert f";{RELAY_PARAM}=" not in record_route
    shell.receive(with_sdp(response_to(forwarded, 200), CALLEE_SDP), CALLEE)
    assert shell.upstream() == [200]
    assert taken(shell, RelayMedia) == []


def test_answers_with_sdp_wait_for_the_relay_and_keep_their_order() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 180), CALLEE)
    shell.receive(with_sdp(response_to(forwarded, 183), CALLEE_SDP), CALLEE)
    shell.receive(with_sdp(response_to(forwarded, 200), CALLEE_SDP), CALLEE)
    assert shell.upstream() == [180]  # the 183 waits for the relay, the 200 behind it
    (first,) = taken(shell, RelayMedia)
    assert first.response.status == 183
    assert first.relay == RELAY
    answered_by_relay(shell, first, RELAYED_SDP)
    assert shell.upstream() == [183]
    (second,) = taken(shell, RelayMedia)
    assert second.response.status == 200
    answered_by_relay(shell, second, RELAYED_SDP)
    sent = [m for m, _ in shell.take() if isinstance(m, Response)]
    assert [m.status for m in sent] == [200]
    assert sent[0].body == RELAYED_SDP
    assert sent[0].header("content-length") == str(len(RELAYED_SDP))


def test_an_answer_the_relay_failed_goes_on_as_it_came() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(with_sdp(response_to(forwarded, 200), CALLEE_SDP), CALLEE)
    (step,) = taken(shell, RelayMedia)
    answered_by_relay(shell, step, None)
    sent = [m for m, _ in shell.take() if isinstance(m, Response)]
    assert [m.status for m in sent] == [200]
    assert sent[0].body == CALLEE_SDP


def test_a_failed_call_ends_its_media_and_leaves_its_result() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 486), CALLEE)
    assert shell.upstream() == [486]
    assert taken(shell, EndMedia) == [EndMedia(RELAY, forwarded.call_id)]
    (result,) = results(shell)
    assert (result.status, result.reason) == (486, "Busy Here")
    assert result.callee == "sip:bob@example.com"
    assert result.destination == BOB
    assert result.caller_tag == "a1"
    assert result.callee_tag == "b1"


def test_a_cancelled_call_ends_its_media() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 180), CALLEE)
    shell.receive(request("CANCEL"))
    shell.receive(response_to(forwarded, 487), CALLEE)
    assert taken(shell, EndMedia) == [EndMedia(RELAY, forwarded.call_id)]
    assert [r.status for r in results(shell)] == [487]


def test_an_answered_call_keeps_its_media_and_its_result_names_who_answered() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 200), CALLEE)  # no SDP: nothing for the relay
    assert shell.upstream() == [200]
    assert taken(shell, EndMedia) == []
    (result,) = results(shell)
    assert result.status == 200
    assert result.destination == BOB
    assert result.caller == result.caller_shown == "sip:alice@example.com"


def test_a_core_that_records_no_calls_ends_a_failed_calls_media_all_the_same() -> None:
    shell = FakeShell()
    shell.core.records_calls = False  # as the engine sets it without accounting
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 486), CALLEE)
    assert shell.upstream() == [486]
    assert taken(shell, EndMedia) == [EndMedia(RELAY, forwarded.call_id)]
    assert results(shell) == []


def test_a_challenge_is_no_call() -> None:
    shell = FakeShell()
    shell.receive(request())
    shell.reply(407, "Proxy Authentication Required")
    assert shell.upstream() == [100, 407]
    assert results(shell) == []


def test_a_failed_reinvite_ends_neither_the_media_nor_the_call() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 200), CALLEE)
    route = forwarded.header_values("record-route")[0]
    shell.advance(64 * T1)
    results(shell)
    reinvite = request(to_tag="b1", cseq=2, extra=(f"Route: {route}",))
    shell.receive(with_sdp(reinvite))
    shell.upstream()
    assert shell.asked[0].context.routed_to_us
    shell.asked[0].context.media_relay = RELAY
    shell.route(BOB)
    (copy,) = shell.downstream("INVITE")
    shell.receive(response_to(copy, 488), CALLEE)
    assert shell.upstream() == [488]
    assert taken(shell, EndMedia) == []
    assert results(shell) == []


def test_an_ack_by_our_route_carries_the_relay() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 200), CALLEE)
    route = forwarded.header_values("record-route")[0]
    shell.receive(with_sdp(request("ACK", BOB, to_tag="b1", extra=(f"Route: {route}",))))
    (ack,) = taken(shell, ForwardAck)
    assert ack.relay == RELAY


def test_timer_c_ends_the_media_of_a_call_nobody_answers() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(response_to(forwarded, 180), CALLEE)
    shell.advance(TIMER_C)
    assert len(shell.downstream("CANCEL")) == 1
    shell.receive(response_to(forwarded, 487), CALLEE)
    assert shell.upstream() == [180, 408]
    assert taken(shell, EndMedia) == [EndMedia(RELAY, forwarded.call_id)]
    assert [r.status for r in results(shell)] == [408]


def test_a_retransmitted_2xx_gets_the_relays_sdp_without_asking_again() -> None:
    shell = FakeShell()
    forwarded = relayed_call(shell)
    shell.receive(with_sdp(response_to(forwarded, 200), CALLEE_SDP), CALLEE)
    (step,) = taken(shell, RelayMedia)
    answered_by_relay(shell, step, RELAYED_SDP)
    shell.take()
    shell.receive(with_sdp(response_to(forwarded, 200), CALLEE_SDP), CALLEE)  # no ACK yet
    assert taken(shell, RelayMedia) == []
    sent = [m for m, _ in shell.take() if isinstance(m, Response)]
    assert [m.status for m in sent] == [200]
    assert sent[0].body == RELAYED_SDP
