"""Client transactions (RFC 3261 §17.1, RFC 6026 §7.2) against a fake clock."""

from __future__ import annotations

import pytest

from sipfleet.sip import Request
from sipfleet.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    Send,
    State,
    Timer,
    Timers,
    TransactionLayer,
)
from tests.sip.transaction.harness import FakeShell, answer, request


def start(
    method: str, transport: str, timers: Timers | None = None
) -> tuple[TransactionLayer, ClientTransaction, FakeShell]:
    layer = TransactionLayer(timers or Timers())
    shell = FakeShell()
    client, actions = layer.create_client(request(method, transport=transport))
    shell.run(actions)
    return layer, client, shell


def feed(
    layer: TransactionLayer,
    shell: FakeShell,
    client: ClientTransaction,
    at: float,
    status: int,
    tag: str = "uas1",
) -> None:
    """At ``at``, the peer answers ``client``'s request with ``status``."""
    shell.advance_to(at)
    actions = layer.receive(answer(client.request, status, tag))
    assert actions is not None, "the response did not match its transaction"
    shell.run(actions)


# Retransmissions until the timeout, when no response ever comes.
NO_ANSWER = [
    # method, transport, timers, send times, timeout timer, timeout time
    ("INVITE", "UDP", Timers(), [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5], Timer.B, 32.0),
    ("INVITE", "TCP", Timers(), [0], Timer.B, 32.0),
    ("INVITE", "TLS", Timers(), [0], Timer.B, 32.0),
    ("INVITE", "UDP", Timers(t1=0.1, t2=0.3), [0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3], Timer.B, 6.4),
    (
        "OPTIONS",
        "UDP",
        Timers(),
        [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5],
        Timer.F,
        32.0,
    ),
    ("OPTIONS", "TCP", Timers(), [0], Timer.F, 32.0),
    ("REGISTER", "UDP", Timers(t1=1.0, t2=2.0), [0, 1, 3, 5, *range(7, 64, 2)], Timer.F, 64.0),
]


@pytest.mark.parametrize(("method", "transport", "timers", "sends", "timer", "timeout"), NO_ANSWER)
def test_retransmits_until_timeout(
    method: str,
    transport: str,
    timers: Timers,
    sends: list[float],
    timer: Timer,
    timeout: float,
) -> None:
    layer, client, shell = start(method, transport, timers)
    shell.advance_to(1000)
    assert shell.send_times() == pytest.approx(sends)
    assert all(message is client.request for _, message in shell.sent())
    assert [(round(at, 9), what) for at, what in shell.told()] == [
        (timeout, f"Timeout {timer}"),
        (timeout, "Terminated"),
    ]
    assert client.state is State.TERMINATED
    assert len(layer) == 0


def test_provisional_stops_invite_retransmissions_and_timer_b() -> None:
    layer, client, shell = start("INVITE", "UDP")
    feed(layer, shell, client, 2.0, 100)
    feed(layer, shell, client, 3.0, 180)
    shell.advance_to(600)
    assert shell.send_times() == [0, 0.5, 1.5]
    assert shell.told() == [(2.0, "Deliver 100"), (3.0, "Deliver 180")]
    assert client.state is State.PROCEEDING  # Timer C is the proxy's, not ours
    assert len(layer) == 1


def test_provisional_slows_non_invite_retransmissions_to_t2() -> None:
    layer, client, shell = start("OPTIONS", "UDP")
    feed(layer, shell, client, 1.0, 100)
    shell.advance_to(100)
    # E was due at 1.5 (interval 1 s); in Proceeding it is reset to T2 each time.
    assert shell.send_times() == [0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert shell.told() == [(1.0, "Deliver 100"), (32.0, "Timeout F"), (32.0, "Terminated")]


@pytest.mark.parametrize("status", [300, 302, 404, 486, 503, 603])
def test_invite_failure_is_acked_and_absorbed_for_timer_d(status: int) -> None:
    layer, client, shell = start("INVITE", "UDP")
    feed(layer, shell, client, 0.7, 180)
    feed(layer, shell, client, 2.0, status)
    feed(layer, shell, client, 2.5, status)  # our ACK was lost: the response comes again
    feed(layer, shell, client, 4.0, status)
    assert shell.told() == [(0.7, "Deliver 180"), (2.0, f"Deliver {status}")]
    sent = shell.sent()
    assert [at for at, _ in sent] == [0, 0.5, 2.0, 2.5, 4.0]
    acks = [message for _, message in sent[2:]]
    assert acks[0] is acks[1] is acks[2]
    assert client.state is State.COMPLETED
    shell.advance_to(2.0 + 32 - 0.01)
    assert client.state is State.COMPLETED
    shell.advance_to(40)
    assert shell.told()[-1] == (34.0, "Terminated")
    assert len(layer) == 0


def test_ack_for_failure_follows_17_1_1_3() -> None:
    layer, client, shell = start("INVITE", "UDP")
    feed(layer, shell, client, 1.0, 486, tag="busy7")
    ack = shell.sent()[-1][1]
    invite = client.request
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri_text == invite.uri_text
    assert [str(via) for via in ack.vias] == [str(invite.top_via)]  # only our Via
    assert ack.cseq == (invite.cseq.seq, "ACK")
    assert ack.to.tag == "busy7"
    assert ack.from_.tag == invite.from_.tag
    assert ack.call_id == invite.call_id
    assert ack.header_lines("route") == invite.header_lines("route")
    assert isinstance(client, ClientInviteTransaction)
    assert client.ack is ack


def test_invite_failure_over_tcp_terminates_at_once() -> None:
    layer, client, shell = start("INVITE", "TCP")
    feed(layer, shell, client, 1.0, 404)
    assert [m.method for _, m in shell.sent() if isinstance(m, Request)] == ["INVITE", "ACK"]
    assert shell.told() == [(1.0, "Deliver 404"), (1.0, "Terminated")]
    assert len(layer) == 0


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_invite_2xx_goes_to_accepted_and_passes_every_2xx_up(transport: str) -> None:
    layer, client, shell = start("INVITE", transport)
    feed(layer, shell, client, 1.0, 180)
    feed(layer, shell, client, 2.0, 200)
    assert client.state is State.ACCEPTED
    feed(layer, shell, client, 2.5, 200)  # retransmission: the TU (not us) ACKs 2xx
    feed(layer, shell, client, 3.0, 200, tag="fork2")  # another fork answered too
    feed(layer, shell, client, 3.5, 486, tag="fork3")  # not a 2xx: absorbed
    assert shell.send_times() == ([0, 0.5] if transport == "UDP" else [0])  # no ACK from us
    shell.advance_to(100)
    assert shell.told() == [
        (1.0, "Deliver 180"),
        (2.0, "Deliver 200"),
        (2.5, "Deliver 200"),
        (3.0, "Deliver 200"),
        (34.0, "Terminated"),  # Timer M, 64*T1 after the first 2xx
    ]


def test_invite_2xx_straight_from_calling_cancels_a_and_b() -> None:
    layer, client, shell = start("INVITE", "UDP")
    feed(layer, shell, client, 0.2, 200)
    assert shell.armed(client) == {Timer.M}


def test_2xx_after_failure_still_reaches_the_tu() -> None:
    # A downstream proxy may forward a late 2xx after a 6xx (§16.7 step 5).
    layer, client, shell = start("INVITE", "UDP")
    feed(layer, shell, client, 1.0, 603)
    feed(layer, shell, client, 2.0, 200, tag="late")
    assert shell.told() == [(1.0, "Deliver 603"), (2.0, "Deliver 200")]
    assert len(shell.sent()) == 3  # INVITE, its retransmission, one ACK


@pytest.mark.parametrize(("transport", "completed_for"), [("UDP", 5.0), ("TCP", 0.0)])
def test_non_invite_final_absorbs_retransmissions_for_timer_k(
    transport: str, completed_for: float
) -> None:
    layer, client, shell = start("OPTIONS", transport)
    feed(layer, shell, client, 1.0, 200)
    if transport == "UDP":
        feed(layer, shell, client, 2.0, 200)  # retransmitted final: not passed up
    shell.advance_to(100)
    assert shell.told() == [(1.0, "Deliver 200"), (1.0 + completed_for, "Terminated")]
    assert len(layer) == 0


def test_non_invite_final_from_proceeding() -> None:
    layer, client, shell = start("REGISTER", "UDP")
    feed(layer, shell, client, 0.2, 100)  # before E first fires: every interval is T2 from now
    feed(layer, shell, client, 6.0, 401)
    shell.advance_to(100)
    assert shell.send_times() == [0, 0.5, 4.5]
    assert shell.told() == [(0.2, "Deliver 100"), (6.0, "Deliver 401"), (11.0, "Terminated")]


TRANSPORT_ERRORS = [
    # method, transport, responses before the error, TU told
    ("INVITE", "UDP", [], ["TransportError", "Terminated"]),
    ("INVITE", "TCP", [], ["TransportError", "Terminated"]),
    ("INVITE", "UDP", [180], ["Deliver 180", "TransportError", "Terminated"]),
    ("INVITE", "UDP", [486], ["Deliver 486", "TransportError", "Terminated"]),  # the ACK failed
    ("INVITE", "UDP", [200], ["Deliver 200"]),  # nothing is sent in Accepted
    ("OPTIONS", "UDP", [], ["TransportError", "Terminated"]),
    ("OPTIONS", "TCP", [183], ["Deliver 183", "TransportError", "Terminated"]),
    ("OPTIONS", "UDP", [200], ["Deliver 200"]),  # nothing is sent in Completed
]


@pytest.mark.parametrize(("method", "transport", "before", "told"), TRANSPORT_ERRORS)
def test_transport_error(method: str, transport: str, before: list[int], told: list[str]) -> None:
    layer, client, shell = start(method, transport)
    for status in before:
        feed(layer, shell, client, 0.1, status)
    shell.run(client.transport_failed())  # the harness checks no timer is left armed
    assert [what for _, what in shell.told()] == told


def test_stale_and_foreign_timer_fires_are_ignored() -> None:
    layer, client, shell = start("INVITE", "UDP")
    feed(layer, shell, client, 0.2, 180)
    for timer in Timer:
        assert client.timer_fired(timer) == []
    assert client.state is State.PROCEEDING


def test_terminated_transaction_ignores_everything() -> None:
    layer, client, shell = start("OPTIONS", "TCP")
    feed(layer, shell, client, 0.2, 200)
    assert client.terminated
    assert client.receive(answer(client.request, 200)) == []
    assert client.timer_fired(Timer.F) == []
    assert client.transport_failed() == []
    assert layer.receive(answer(client.request, 200)) is None


def test_first_actions_send_the_request_and_arm_the_timers() -> None:
    layer = TransactionLayer()
    client, actions = layer.create_client(
        request("INVITE", transport="UDP"), peer=("192.0.2.1", 5060)
    )
    assert actions[0] == Send(client, client.request)
    assert client.peer == ("192.0.2.1", 5060)
    assert {str(a.timer) for a in actions[1:]} == {"A", "B"}  # type: ignore[union-attr]


def test_client_needs_our_rfc3261_branch_and_a_fitting_method() -> None:
    with pytest.raises(ValueError, match="RFC 3261 branch"):
        TransactionLayer().create_client(request("OPTIONS", branch="1234"))
    with pytest.raises(ValueError, match="not an INVITE"):
        ClientInviteTransaction(request("BYE"))
    with pytest.raises(ValueError, match="non-INVITE"):
        ClientNonInviteTransaction(request("ACK"))


def test_reliable_comes_from_the_via_unless_given() -> None:
    assert ClientNonInviteTransaction(request("OPTIONS", transport="TLS")).reliable
    assert not ClientNonInviteTransaction(request("OPTIONS", transport="UDP")).reliable
    assert ClientNonInviteTransaction(request("OPTIONS", transport="UDP"), reliable=True).reliable
