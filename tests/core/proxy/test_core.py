"""The sans-IO proxy core on a fake clock: every test runs in-process in milliseconds,
however long the SIP timers it waits for (Timer B 32 s, Timer C 180 s, Timer L 32 s)."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipfleet.core.proxy.actions import ForwardAck, ForwardResponse, TrunkOutcome, Unmatched
from sipfleet.core.proxy.core import ANSWERED, EngineSettings, Listening, ProxyCore, _answered
from sipfleet.core.proxy.resolve import ResolveError
from sipfleet.core.proxy.targets import Target, plan_for_trunks
from sipfleet.sip import Request
from sipfleet.sip.transaction import State, Timer
from sipfleet.transport.base import Destination, Peer
from tests.core.proxy.harness import PROXY_HOST, PROXY_PORT, T1, TIMER_C, FakeShell
from tests.core.proxy.messages import request, response_to

LISTEN_HOSTS = ["192.0.2.1", "10.0.0.5", "::1", "2001:db8::2"]
PEER_HOSTS = ["192.0.2.7", "example.com", "::1", "[2001:db8::9]", "fe80::1"]

BOB = "sip:bob@203.0.113.5:5070"
BOB2 = "sip:bob@203.0.113.6:5070"
CALLEE = Peer("udp", "203.0.113.5", 5070, PROXY_HOST, PROXY_PORT)
CALLEE2 = Peer("udp", "203.0.113.6", 5070, PROXY_HOST, PROXY_PORT)


def calling(shell: FakeShell, *targets: str | Target, serial: bool = False) -> list[Request]:
    """The caller's INVITE, routed to ``targets``; returns the copies sent."""
    shell.receive(request())
    assert shell.upstream() == [100]  # §16.2: at once, before the policy answers
    shell.route(*targets, serial=serial)
    return shell.downstream("INVITE")


def test_a_call_forwarded_answered_and_forgotten() -> None:
    shell = FakeShell()
    (forwarded,) = calling(shell, BOB)
    assert forwarded.uri_text == BOB
    assert forwarded.max_forwards == 69
    assert len(forwarded.vias) == 2
    (record_route,) = forwarded.header_values("record-route")
    ours = f"<sip:{PROXY_HOST}:{PROXY_PORT};lr>"
    assert record_route == shell.core.dialog_tokens.stamp(ours, request())
    shell.receive(response_to(forwarded, 180), CALLEE)
    shell.receive(response_to(forwarded, 200), CALLEE)
    assert shell.upstream() == [180, 200]
    assert shell.core.active == 0
    shell.advance(64 * T1)  # Timers L and M: the transactions end, the call is forgotten
    assert shell.core.calls == {}
    assert len(shell.core.layer) == 0
    assert shell.core.branch_of == {}
    assert shell.timers == {}


def test_timer_c_is_a_timer_of_the_branch_transaction() -> None:
    shell = FakeShell()
    calling(shell, BOB)
    (client,) = shell.core.layer._clients.values()
    assert shell.timers[client, Timer.C] == TIMER_C


def test_parallel_fork_the_first_2xx_cancels_the_ringing_other() -> None:
    shell = FakeShell()
    first, second = calling(shell, BOB, BOB2)
    shell.receive(response_to(second, 180, to_tag="b2"), CALLEE2)
    shell.receive(response_to(first, 200), CALLEE)
    assert shell.upstream() == [180, 200]
    (cancel,) = shell.downstream("CANCEL")
    assert cancel.top_via.branch == second.top_via.branch


def test_a_branch_cancelled_before_it_rang_gets_its_cancel_when_it_does() -> None:
    shell = FakeShell()
    first, second = calling(shell, BOB, BOB2)
    shell.receive(response_to(first, 200), CALLEE)
    assert shell.downstream("CANCEL") == []  # §9.1: not before a provisional response
    shell.receive(response_to(second, 100, to_tag="b2"), CALLEE2)
    assert len(shell.downstream("CANCEL")) == 1


def test_caller_cancel_gets_200_and_487_and_the_callee_a_cancel() -> None:
    shell = FakeShell()
    (forwarded,) = calling(shell, BOB)
    shell.receive(response_to(forwarded, 180), CALLEE)
    shell.upstream()
    shell.receive(request("CANCEL"))
    assert sorted(shell.upstream()) == [200, 487]
    assert len(shell.downstream("CANCEL")) == 1


def test_cancel_while_the_policy_decides_is_487_and_nothing_is_forwarded() -> None:
    shell = FakeShell()
    shell.receive(request())
    shell.receive(request("CANCEL"))
    assert shell.upstream() == [100, 200, 487]
    shell.route(BOB)
    assert shell.downstream() == []


def test_cancel_for_an_unknown_transaction_is_481() -> None:
    shell = FakeShell()
    shell.receive(request("CANCEL"))
    assert shell.upstream() == [481]


def test_timer_c_cancels_a_ringing_callee_and_the_caller_gets_408() -> None:
    shell = FakeShell()
    (forwarded,) = calling(shell, BOB)
    shell.receive(response_to(forwarded, 180), CALLEE)
    shell.upstream()
    shell.advance(TIMER_C - 1)
    shell.receive(response_to(forwarded, 180), CALLEE)  # restarts Timer C
    shell.advance(TIMER_C - 1)
    assert shell.downstream("CANCEL") == []
    assert shell.upstream() == [180]
    shell.advance(1)
    assert len(shell.downstream("CANCEL")) == 1
    shell.receive(response_to(forwarded, 487), CALLEE)
    assert shell.upstream() == [408]  # not 487: the callee never answered


def test_timer_c_on_a_callee_that_never_answered_is_408_at_once() -> None:
    shell = FakeShell(timer_c=1.0)
    (forwarded,) = calling(shell, BOB)
    shell.advance(1.0)
    assert shell.upstream() == [408]
    shell.downstream("INVITE")  # Timer A's retransmissions
    shell.receive(response_to(forwarded, 180), CALLEE)  # too late: cancelled now (§9.1)
    assert len(shell.downstream("CANCEL")) == 1
    assert shell.upstream() == []


def test_a_callee_that_never_answers_ends_with_408_after_timer_b() -> None:
    shell = FakeShell()
    calling(shell, BOB)
    shell.advance(64 * T1 - 0.01)
    assert shell.upstream() == []
    assert len(shell.downstream("INVITE")) == 6  # Timer A: 0.5, 1, 2, 4, 8, 16 s
    shell.advance(0.01)
    assert shell.upstream() == [408]


def test_serial_forking_tries_the_next_after_a_failure() -> None:
    shell = FakeShell()
    (first,) = calling(shell, BOB, BOB2, serial=True)
    shell.receive(response_to(first, 486), CALLEE)
    (second,) = shell.downstream("INVITE")
    assert second.uri_text == BOB2
    shell.receive(response_to(second, 200, to_tag="b2"), CALLEE2)
    assert shell.upstream() == [200]


def test_trunks_fail_over_on_503_and_report_each_outcome() -> None:
    shell = FakeShell()
    shell.receive(request())
    shell.upstream()
    trunks = [Target(BOB, gateway="gw1", timeout=2.0), Target(BOB2, gateway="gw2")]
    ask = shell.asked.pop()
    shell.run(shell.core.routed(ask.call, plan_for_trunks(trunks)))
    (first,) = shell.downstream("INVITE")
    shell.receive(response_to(first, 503), CALLEE)
    (second,) = shell.downstream("INVITE")
    assert second.uri_text == BOB2
    shell.receive(response_to(second, 200, to_tag="b2"), CALLEE2)
    assert shell.upstream() == [200]
    assert shell.other == [TrunkOutcome("gw1", 503, False), TrunkOutcome("gw2", 200, False)]


def test_a_trunk_that_does_not_ring_in_time_is_left_for_the_next() -> None:
    shell = FakeShell()
    shell.receive(request())
    trunks = [Target(BOB, gateway="gw1", timeout=2.0), Target(BOB2, gateway="gw2")]
    shell.run(shell.core.routed(shell.asked.pop().call, plan_for_trunks(trunks)))
    (first,) = shell.downstream("INVITE")
    shell.receive(response_to(first, 100), CALLEE)
    shell.advance(2.0)
    assert len(shell.downstream("CANCEL")) == 1
    (second,) = shell.downstream("INVITE")
    assert second.uri_text == BOB2
    assert shell.other == [TrunkOutcome("gw1", 408, False)]


def test_a_request_too_large_once_forwarded_gets_513() -> None:
    shell = FakeShell()
    shell.receive(request())
    shell.upstream()
    shell.route(BOB)
    (client,) = shell.core.layer._clients.values()
    shell.run(shell.core.send_failed(client, 513))
    assert shell.upstream() == [513]


def test_overload_sheds_new_requests_statelessly_and_dialogs_go_on() -> None:
    shell = FakeShell()
    for second in (0.0, 1.0):  # the socket buffer stays full
        shell.core.overload.observe(second, 0.0, 1 << 30)
    shell.receive(request())
    (refused,) = shell.take()
    assert refused[0].status == 503
    assert refused[0].header("retry-after")
    assert len(shell.core.layer) == 0
    shell.receive(request("BYE", BOB, to_tag="b1"))
    assert shell.asked  # an in-dialog request is routed


def test_caps_on_calls_and_routing() -> None:
    shell = FakeShell(max_routing=1)
    shell.receive(request())
    shell.receive(request(via="SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-uac-2"))
    assert shell.upstream() == [100, 503]
    assert shell.core.stats.shed == 1


def stray_bye(n: int) -> Request:
    via = f"SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-stray-{n}"
    return request("BYE", BOB, to_tag="gone", call_id=f"stray-{n}", via=via)


def test_every_kept_transaction_counts_against_the_cap() -> None:
    """Answered requests wait out Timer J (32 s): they count until they leave, so a flood
    of stray requests meets the cap instead of growing the proxy without bound."""
    shell = FakeShell(max_transactions=2)
    for n in range(2):
        shell.receive(stray_bye(n))
        shell.reply(404)
    assert shell.upstream() == [404, 404]
    shell.receive(stray_bye(2))
    assert shell.upstream() == [503]  # stateless: nothing more is kept
    assert shell.asked == []
    assert len(shell.core.layer) == 2
    shell.advance(64 * T1)  # Timer J: both leave
    shell.receive(stray_bye(3))
    assert shell.asked


def test_an_answered_request_keeps_only_what_answers_its_retransmissions() -> None:
    shell = FakeShell()
    shell.receive(stray_bye(0))
    shell.reply(404)
    assert shell.upstream() == [404]
    assert shell.core.calls == {}  # the call is over: its transaction answers alone
    (server,) = shell.core.layer._servers.values()
    assert server.request.lines == []  # the request let go of
    shell.receive(stray_bye(0))  # a retransmission
    assert shell.upstream() == [404]
    assert shell.asked == []


def test_an_answered_call_lets_go_of_its_copies_while_a_2xx_may_still_come() -> None:
    shell = FakeShell()
    (forwarded,) = calling(shell, BOB)
    ok = response_to(forwarded, 200)
    shell.receive(ok, CALLEE)
    assert shell.upstream() == [200]
    (call,) = shell.core.calls.values()  # a 2xx retransmission goes through the call
    assert call.responses is not None
    (branch,) = call.responses.branches
    assert branch.request is None
    assert branch.client is not None
    assert branch.client.request.lines == []
    shell.receive(ok, CALLEE)
    assert shell.upstream() == [200]


def test_a_cancel_after_the_final_answer_gets_200_and_changes_nothing() -> None:
    shell = FakeShell()
    (forwarded,) = calling(shell, BOB)
    shell.receive(response_to(forwarded, 486), CALLEE)
    assert shell.upstream() == [486]
    shell.receive(request("CANCEL"))
    assert shell.upstream() == [200]
    assert shell.downstream("CANCEL") == []


def test_the_2xx_ack_follows_our_route_only_with_its_token() -> None:
    shell = FakeShell()
    route = shell.core.dialog_tokens.stamp(f"<sip:{PROXY_HOST}:{PROXY_PORT};lr>", request())
    shell.receive(request("ACK", BOB, to_tag="b1", extra=(f"Route: {route}",)))
    (forward,) = shell.other
    assert isinstance(forward, ForwardAck)
    assert forward.destination == Destination("udp", "203.0.113.5", 5070)
    forged = f"<sip:{PROXY_HOST}:{PROXY_PORT};lr>"
    shell.receive(request("ACK", BOB, to_tag="b1", extra=(f"Route: {forged}",), cseq=2))
    assert len(shell.other) == 1
    assert shell.core.stats.acks_dropped == 1


def test_a_route_of_ours_without_the_dialog_token_is_not_followed() -> None:
    shell = FakeShell()
    forged = f"Route: <sip:{PROXY_HOST}:{PROXY_PORT};lr>, <sip:10.0.0.9;lr>"
    shell.receive(request("BYE", BOB, to_tag="b1", extra=(forged,)))
    (ask,) = shell.asked
    assert not ask.context.routed_to_us
    assert "route" not in ask.context.request.keys
    assert shell.core.stats.foreign_routes == 1


def test_a_host_name_is_resolved_by_the_shell() -> None:
    shell = FakeShell()
    shell.receive(request())
    shell.route("sip:bob@callee.example:5070", "sip:carol@nowhere.example")
    (found, missing) = shell.resolves
    shell.run(shell.core.resolved(found.ref, Destination("udp", "203.0.113.5", 5070)))
    (forwarded,) = shell.downstream("INVITE")
    shell.run(shell.core.resolved(missing.ref, ResolveError("no address")))
    shell.receive(response_to(forwarded, 486), CALLEE)
    assert shell.upstream() == [100, 486]


def test_the_failure_hook_is_asked_when_every_branch_failed() -> None:
    shell = FakeShell(ask_on_failure=True)
    (forwarded,) = calling(shell, BOB)
    shell.receive(response_to(forwarded, 480), CALLEE)
    (ask,) = shell.asked
    assert ask.failed is not None
    assert ask.failed.status == 480
    shell.route(BOB2)
    (second,) = shell.downstream("INVITE")
    shell.receive(response_to(second, 200, to_tag="b2"), CALLEE2)
    assert shell.upstream() == [200]


def test_stray_responses() -> None:
    shell = FakeShell()
    (forwarded,) = calling(shell, BOB)
    shell.receive(response_to(forwarded, 200), CALLEE)
    shell.advance(64 * T1)  # every transaction over
    shell.other.clear()
    shell.receive(response_to(forwarded, 200), CALLEE)  # a late 2xx retransmission
    options = request("OPTIONS", via=f"SIP/2.0/UDP {PROXY_HOST}:{PROXY_PORT};branch=z9hG4bKx")
    shell.receive(response_to(options, 200), CALLEE)
    assert [type(a) for a in shell.other] == [ForwardResponse, Unmatched]


def test_options_to_the_proxy_itself_is_answered() -> None:
    shell = FakeShell()
    shell.receive(request("OPTIONS", f"sip:{PROXY_HOST}:{PROXY_PORT}"))
    ((answer, _),) = shell.take()
    assert answer.status == 200
    assert "INVITE" in (answer.header("allow") or "")
    assert shell.asked == []


@pytest.mark.parametrize("ending", ["answered", "cancelled", "timed out", "refused"])
def test_calls_leave_no_reference_cycles(ending: str) -> None:
    """Transactions, calls, branches and timers are freed by reference counting."""
    shell = FakeShell()
    gc.collect()
    gc.disable()
    try:
        for n in range(20):
            shell.receive(
                request(call_id=f"c{n}", via=f"SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK{n}")
            )
            shell.route(BOB, BOB2)
            first, _ = shell.downstream("INVITE")
            if ending == "answered":
                shell.receive(response_to(first, 200), CALLEE)
            elif ending == "cancelled":
                shell.receive(response_to(first, 180), CALLEE)
                shell.receive(
                    request(
                        "CANCEL", call_id=f"c{n}", via=f"SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK{n}"
                    )
                )
            elif ending == "refused":
                shell.receive(response_to(first, 603), CALLEE)
            shell.take()
        shell.advance(TIMER_C + 64 * T1)
        assert shell.core.calls == {}
        assert shell.core.branch_of == {}
        assert len(shell.core.layer) == 0
        assert shell.timers == {}
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_the_core_needs_no_event_loop() -> None:
    core = ProxyCore(object(), EngineSettings())  # type: ignore[arg-type]
    assert core.waiting == 0


def test_a_route_of_a_sibling_in_the_pool_is_ours() -> None:
    shell = FakeShell()
    shell.core.adopt_siblings(["sip:192.0.2.2:5060"])
    bye = request("BYE", BOB, to_tag="b1")
    route = shell.core.dialog_tokens.stamp("<sip:192.0.2.2:5060;lr>", bye)
    shell.receive(request("BYE", BOB, to_tag="b1", extra=(f"Route: {route}",)))
    (ask,) = shell.asked
    assert ask.context.routed_to_us
    assert ask.context.our_route is not None


@given(
    st.lists(
        st.tuples(st.sampled_from(["udp", "tcp", "tls"]), st.sampled_from(LISTEN_HOSTS)),
        min_size=1,
        max_size=4,
    ),
    st.lists(
        st.tuples(st.sampled_from(["udp", "tcp", "tls", "ws"]), st.sampled_from(PEER_HOSTS)),
        max_size=8,
    ),
)
def test_our_via_is_what_listening_gives(
    listen: list[tuple[str, str]], destinations: list[tuple[str, str]]
) -> None:
    """The memoised Via text is ``Listening.sent_by``'s, for whatever Listening is
    current (a new one replaces what was memoised)."""
    core = ProxyCore(object(), EngineSettings())  # type: ignore[arg-type]
    assert core._our_via("udp", "192.0.2.7") is None  # not listening yet
    for step in range(2):
        addresses = tuple((t, h, 5060 + i + step) for i, (t, h) in enumerate(listen))
        listening = Listening(addresses)  # type: ignore[arg-type]
        core.listen(listening)
        for transport, host in destinations:
            sent_by = listening.sent_by(transport, host)  # type: ignore[arg-type]
            expected = None if sent_by is None else f"SIP/2.0/{transport.upper()} {sent_by}"
            assert core._our_via(transport, host) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("state", list(State))
def test_answered_is_membership_in_answered(state: State) -> None:
    assert _answered(state) is (state in ANSWERED)
