"""Server transactions (RFC 3261 §17.2, RFC 6026 §7.1) against a fake clock."""

from __future__ import annotations

import pytest

from sipfleet.sip import Request, Response
from sipfleet.sip.transaction import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    State,
    TransactionLayer,
)
from tests.sip.transaction.harness import FakeShell, ack_for, answer, request


def arrive(
    method: str, transport: str = "UDP"
) -> tuple[TransactionLayer, ServerTransaction, FakeShell]:
    layer = TransactionLayer()
    first = request(method, transport=transport, branch="z9hG4bKsrv1")
    assert layer.receive(first) is None  # new: the TU creates the transaction
    return layer, layer.create_server(first), FakeShell()


def again(layer: TransactionLayer, shell: FakeShell, at: float, message: Request) -> None:
    """``message`` arrives at ``at`` and must match a transaction."""
    shell.advance_to(at)
    actions = layer.receive(message)
    assert actions is not None, f"{message.method} did not match"
    shell.run(actions)


def respond(server: ServerTransaction, shell: FakeShell, at: float, status: int) -> Response:
    shell.advance_to(at)
    response = answer(server.request, status, to_tag="srvtag")
    shell.run(server.respond(response))
    return response


def statuses(shell: FakeShell) -> list[tuple[float, int]]:
    return [(at, m.status) for at, m in shell.sent() if isinstance(m, Response)]


# -- INVITE -----------------------------------------------------------------------------
def test_retransmitted_invite_is_answered_with_the_latest_provisional() -> None:
    layer, server, shell = arrive("INVITE")
    again(layer, shell, 0.1, server.request)  # nothing sent yet: absorbed
    respond(server, shell, 0.2, 100)  # the TU sends 100 (Trying), not the transaction
    again(layer, shell, 0.6, server.request)
    respond(server, shell, 1.0, 180)
    again(layer, shell, 1.6, server.request)
    assert statuses(shell) == [(0.2, 100), (0.6, 100), (1.0, 180), (1.6, 180)]
    assert shell.told() == []  # retransmissions never reach the TU
    assert server.state is State.PROCEEDING


FAILURE = [
    # transport, final response retransmissions (Timer G), when Timer H fires
    ("UDP", [2.5, 3.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5, 33.5], 34.0),
    ("TCP", [], 34.0),
]


@pytest.mark.parametrize(("transport", "retransmits", "timer_h"), FAILURE)
def test_final_failure_is_retransmitted_until_timer_h(
    transport: str, retransmits: list[float], timer_h: float
) -> None:
    layer, server, shell = arrive("INVITE", transport)
    respond(server, shell, 0.1, 100)
    respond(server, shell, 2.0, 486)
    assert server.state is State.COMPLETED
    shell.advance_to(100)
    assert statuses(shell) == [(0.1, 100), (2.0, 486)] + [(at, 486) for at in retransmits]
    assert shell.told() == [(timer_h, "Timeout H"), (timer_h, "Terminated")]
    assert len(layer) == 0


def test_ack_confirms_stops_timer_g_and_is_absorbed_for_timer_i() -> None:
    layer, server, shell = arrive("INVITE")
    final = respond(server, shell, 1.0, 404)
    again(layer, shell, 1.2, server.request)  # retransmitted INVITE: final again
    ack = ack_for(server.request, final)
    again(layer, shell, 2.0, ack)
    assert server.state is State.CONFIRMED
    again(layer, shell, 3.0, ack)  # ACK retransmissions are absorbed
    shell.advance_to(100)
    assert statuses(shell) == [(1.0, 404), (1.2, 404), (1.5, 404)]  # G fired once
    assert shell.told() == [(7.0, "Terminated")]  # Timer I = T4 after the ACK
    assert layer.receive(ack) is None


def test_ack_over_tcp_terminates_at_once() -> None:
    layer, server, shell = arrive("INVITE", "TCP")
    final = respond(server, shell, 1.0, 503)
    again(layer, shell, 1.1, ack_for(server.request, final))
    assert shell.told() == [(1.1, "Terminated")]
    assert len(layer) == 0


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_2xx_enters_accepted_where_acks_go_up_and_invites_are_absorbed(transport: str) -> None:
    layer, server, shell = arrive("INVITE", transport)
    respond(server, shell, 0.1, 180)
    ok = respond(server, shell, 1.0, 200)
    assert server.state is State.ACCEPTED
    again(layer, shell, 1.5, server.request)  # retransmitted INVITE: no answer (RFC 6026)
    shell.run(server.respond(ok))  # the TU (UAS core) retransmits its 2xx itself
    ack = ack_for(server.request, ok)  # an ACK on the INVITE's branch
    again(layer, shell, 2.0, ack)
    shell.advance_to(100)
    assert statuses(shell) == [(0.1, 180), (1.0, 200), (1.5, 200)]  # no Timer G
    assert shell.told() == [(2.0, "Deliver ACK"), (33.0, "Terminated")]  # Timer L


def test_responses_after_the_final_one() -> None:
    _layer, server, shell = arrive("INVITE")
    respond(server, shell, 1.0, 486)
    respond(server, shell, 1.1, 500)  # a second failure is discarded
    respond(server, shell, 1.2, 200)  # a late 2xx goes out (a proxy must forward it)
    assert statuses(shell) == [(1.0, 486), (1.2, 200)]
    assert server.state is State.COMPLETED
    assert isinstance(server.last_response, Response)
    assert server.last_response.status == 486


@pytest.mark.parametrize(
    ("before", "state"),
    [
        ([], State.PROCEEDING),
        ([180], State.PROCEEDING),
        ([486], State.COMPLETED),
        ([200], State.ACCEPTED),
    ],
)
def test_invite_transport_error_informs_tu_and_keeps_state(before: list[int], state: State) -> None:
    # RFC 6026 Figure 7: a self-loop in Proceeding, Completed and Accepted.
    layer, server, shell = arrive("INVITE")
    for status in before:
        respond(server, shell, 0.1, status)
    shell.run(server.transport_failed())
    assert shell.told() == [(0.1 if before else 0.0, "TransportError")]
    assert server.state is state
    assert len(layer) == 1


# -- non-INVITE -------------------------------------------------------------------------
def test_register_retransmissions_are_absorbed_then_answered() -> None:
    layer, server, shell = arrive("REGISTER")
    again(layer, shell, 0.5, server.request)  # Trying: the TU has not answered yet
    respond(server, shell, 0.8, 200)
    again(layer, shell, 1.5, server.request)
    again(layer, shell, 3.5, server.request)
    assert statuses(shell) == [(0.8, 200), (1.5, 200), (3.5, 200)]
    shell.advance_to(100)
    assert shell.told() == [(32.8, "Terminated")]  # Timer J = 64*T1
    assert layer.receive(server.request) is None  # a new transaction now


def test_a_compacted_answer_is_resent_byte_for_byte() -> None:
    """``forget_request``: what a finished transaction keeps is the bytes it sent."""
    layer, server, shell = arrive("BYE")
    sent = respond(server, shell, 0.1, 404)
    server.forget_request()
    assert server.request.method == "BYE"
    assert server.request.lines == []
    again(layer, shell, 0.6, request("BYE", branch="z9hG4bKsrv1"))
    (_, first), (_, resent) = shell.sent()
    assert resent.serialize() == first.serialize() == sent.serialize()


def test_non_invite_provisional_answers_retransmissions() -> None:
    layer, server, shell = arrive("OPTIONS")
    respond(server, shell, 0.1, 183)
    again(layer, shell, 0.5, server.request)
    respond(server, shell, 0.9, 200)
    respond(server, shell, 1.0, 202)  # discarded after the final response
    assert statuses(shell) == [(0.1, 183), (0.5, 183), (0.9, 200)]


def test_non_invite_over_tcp_terminates_with_the_final_response() -> None:
    layer, server, shell = arrive("REGISTER", "TCP")
    respond(server, shell, 0.3, 200)
    assert shell.told() == [(0.3, "Terminated")]
    assert len(layer) == 0


@pytest.mark.parametrize(
    ("before", "told"),
    [
        ([], []),
        ([100], ["TransportError", "Terminated"]),
        ([200], ["TransportError", "Terminated"]),
    ],
)
def test_non_invite_transport_error(before: list[int], told: list[str]) -> None:
    _layer, server, shell = arrive("BYE")
    for status in before:
        respond(server, shell, 0.1, status)
    shell.run(server.transport_failed())
    assert [what for _, what in shell.told()] == told


def test_server_kinds_check_the_method() -> None:
    with pytest.raises(ValueError, match="not an INVITE"):
        ServerInviteTransaction(request("OPTIONS"))
    with pytest.raises(ValueError, match="non-INVITE"):
        ServerNonInviteTransaction(request("ACK"))
    with pytest.raises(ValueError, match="non-INVITE"):
        TransactionLayer().create_server(request("ACK"))


def test_a_second_server_for_the_same_request_is_refused() -> None:
    layer = TransactionLayer()
    layer.create_server(request("OPTIONS"))
    with pytest.raises(ValueError, match="exists"):
        layer.create_server(request("OPTIONS"))
