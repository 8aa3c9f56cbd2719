"""Which transaction a message belongs to: §17.1.3, §17.2.3 and the RFC 2543 fallback."""

from __future__ import annotations

import pytest

from sipfleet.sip.builders import make_cancel
from sipfleet.sip.transaction import (
    Deliver,
    ServerInviteTransaction,
    State,
    TransactionLayer,
    request_key,
)
from tests.sip.transaction.harness import FakeShell, ack_for, answer, request


# -- client side (§17.1.3) --------------------------------------------------------------
def test_responses_go_to_the_transaction_of_their_branch_and_method() -> None:
    layer = TransactionLayer()
    invite_tx, _ = layer.create_client(request("INVITE", branch="z9hG4bKout1"))
    cancel_tx, _ = layer.create_client(make_cancel(invite_tx.request))
    other_tx, _ = layer.create_client(request("INVITE", branch="z9hG4bKout2"))
    assert len(layer) == 3

    ok_cancel = answer(cancel_tx.request, 200)
    terminated = answer(invite_tx.request, 487)
    assert layer.match_response(ok_cancel) is cancel_tx
    assert layer.match_response(terminated) is invite_tx
    assert layer.match_response(answer(other_tx.request, 180)) is other_tx
    actions = layer.receive(terminated)
    assert actions is not None
    assert Deliver(invite_tx, terminated) in actions


def test_response_for_no_transaction() -> None:
    layer = TransactionLayer()
    layer.create_client(request("INVITE", branch="z9hG4bKout1"))
    assert layer.receive(answer(request("INVITE", branch="z9hG4bKother"), 200)) is None
    # Same branch, other method: not ours either.
    assert layer.receive(answer(request("BYE", branch="z9hG4bKout1"), 200)) is None


# -- server side, RFC 3261 branches (§17.2.3) ---------------------------------------------
def test_retransmission_matches_and_new_requests_do_not() -> None:
    layer = TransactionLayer()
    server = layer.create_server(request("INVITE", branch="z9hG4bKa"))
    assert layer.match_request(request("INVITE", branch="z9hG4bKa")) is server
    assert layer.match_request(request("INVITE", branch="z9hG4bKb")) is None
    # Same branch from another sent-by is another transaction.
    assert (
        layer.match_request(request("INVITE", branch="z9hG4bKa", sent_by="evil.example.com"))
        is None
    )
    # Sent-by host is compared without regard to case.
    assert (
        layer.match_request(request("INVITE", branch="z9hG4bKa", sent_by="PROXY.example.com:5060"))
        is server
    )


def test_cancel_is_its_own_transaction_and_finds_the_invite() -> None:
    layer = TransactionLayer()
    invite = request("INVITE", branch="z9hG4bKa")
    invite_tx = layer.create_server(invite)
    cancel = request("CANCEL", branch="z9hG4bKa")
    assert layer.receive(cancel) is None
    cancel_tx = layer.create_server(cancel)
    assert cancel_tx is not invite_tx
    assert layer.match_request(cancel) is cancel_tx
    assert layer.cancel_target(cancel) is invite_tx
    assert layer.cancel_target(request("CANCEL", branch="z9hG4bKz")) is None


def test_ack_for_failure_matches_the_invite_and_ack_for_2xx_does_not() -> None:
    layer = TransactionLayer()
    shell = FakeShell()
    invite = request("INVITE", branch="z9hG4bKa")
    server = layer.create_server(invite)
    final = answer(invite, 486)
    shell.run(server.respond(final))
    # The ACK for a 2xx is a transaction of its own, with a new branch: the TU's.
    assert layer.receive(ack_for(invite, final, branch="z9hG4bKnew")) is None
    assert layer.receive(ack_for(invite, final)) is not None
    assert server.state is State.CONFIRMED


def test_ack_key_is_the_invite_key() -> None:
    invite = request("INVITE", branch="z9hG4bKa")
    ack = ack_for(invite, answer(invite, 404))
    assert request_key(ack) == request_key(invite)
    assert request_key(request("BYE", branch="z9hG4bKa")) != request_key(invite)


# -- RFC 2543 peers: no magic cookie ------------------------------------------------------
@pytest.mark.parametrize("compacted", [False, True])
@pytest.mark.parametrize("branch", [None, "1234abcd"])
def test_rfc2543_invite_retransmission_and_ack(branch: str | None, compacted: bool) -> None:
    layer = TransactionLayer()
    shell = FakeShell()
    invite = request("INVITE", branch=branch)
    server = layer.create_server(invite)
    assert layer.match_request(request("INVITE", branch=branch)) is server
    # Any difference in R-URI, CSeq, Call-ID-bearing fields or top Via: another request.
    assert layer.match_request(request("INVITE", branch=branch, cseq=314160)) is None
    assert layer.match_request(request("INVITE", branch=branch, uri="sip:carol@x.example")) is None
    assert layer.match_request(request("INVITE", branch=branch, sent_by="pc9.example.com")) is None

    final = answer(invite, 480, to_tag="ours")
    shell.run(server.respond(final))
    if compacted:  # the TU let go of the request; the answer is kept as bytes
        server.forget_request()
    stranger = answer(invite, 480, to_tag="theirs")
    assert layer.match_request(ack_for(invite, stranger)) is None  # not our response's tag
    assert layer.receive(ack_for(invite, final)) is not None
    assert server.state is State.CONFIRMED
    assert layer.receive(ack_for(invite, final)) == []  # a retransmission of that ACK


def test_rfc2543_ack_before_any_final_response_matches_nothing() -> None:
    layer = TransactionLayer()
    invite = request("INVITE", branch=None)
    layer.create_server(invite)
    assert layer.match_request(ack_for(invite, answer(invite, 486, to_tag="x"))) is None


def test_rfc2543_reinvite_ack_keeps_the_dialog_tag() -> None:
    layer = TransactionLayer()
    reinvite = request("INVITE", branch=None, to_tag="dlg")
    server = layer.create_server(reinvite)
    assert isinstance(server, ServerInviteTransaction)
    FakeShell().run(server.respond(answer(reinvite, 491, to_tag="dlg")))
    assert server.final_to_tag == "dlg"
    assert layer.match_request(ack_for(reinvite, answer(reinvite, 491, to_tag="dlg"))) is server


def test_rfc2543_cancel_and_non_invite() -> None:
    layer = TransactionLayer()
    invite_tx = layer.create_server(request("INVITE", branch=None))
    cancel = request("CANCEL", branch=None)
    assert layer.match_request(cancel) is None
    cancel_tx = layer.create_server(cancel)
    assert layer.match_request(request("CANCEL", branch=None)) is cancel_tx
    assert layer.cancel_target(cancel) is invite_tx
    options_tx = layer.create_server(request("OPTIONS", branch=None, cseq=7))
    assert layer.match_request(request("OPTIONS", branch=None, cseq=7)) is options_tx
    assert layer.match_request(request("OPTIONS", branch=None, cseq=8)) is None


def test_rfc3261_and_rfc2543_requests_never_share_a_transaction() -> None:
    layer = TransactionLayer()
    layer.create_server(request("INVITE", branch="z9hG4bKa"))
    assert layer.match_request(request("INVITE", branch=None)) is None
    assert layer.match_request(request("INVITE", branch="z9hG4bK")) is None


def test_counts() -> None:
    layer = TransactionLayer()
    layer.create_server(request("INVITE", branch="z9hG4bKa"))
    layer.create_client(request("INVITE", branch="z9hG4bKb"))
    layer.create_client(request("OPTIONS", branch="z9hG4bKc"))
    assert (len(layer), layer.server_count, layer.client_count) == (3, 1, 2)
