"""Which transaction a message belongs to: §17.1.3, §17.2.3 and the RFC 2543 fallback."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfleet.sip import ParseError, Request, Response, parse_message
from sipfleet.sip.builders import make_cancel
from sipfleet.sip.transaction import (
    ClientTransaction,
    Deliver,
    ServerInviteTransaction,
    State,
    TransactionLayer,
    request_key,
    response_key,
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


@pytest.mark.parametrize("compacted", [False, True])
def test_rfc2543_ack_of_an_accepted_invite_matches_by_its_2xx_tag(compacted: bool) -> None:
    """Accepted, a transaction the TU let go of keeps of its 2xx the To line alone (it
    resends nothing): the ACK still matches by that tag, another tag's does not, and
    the INVITE's retransmissions are still absorbed."""
    layer = TransactionLayer()
    shell = FakeShell()
    invite = request("INVITE", branch=None)
    server = layer.create_server(invite)
    assert isinstance(server, ServerInviteTransaction)
    final = answer(invite, 200, to_tag="ours")
    shell.run(server.respond(final))
    if compacted:
        server.forget_request()
        kept = server.last_response
        assert kept is not None
        assert kept.status == 200
        assert kept.keys == ["to"]
        assert kept.lines[0].endswith(";tag=ours")
    assert server.final_to_tag == "ours"
    assert layer.match_request(ack_for(invite, answer(invite, 200, to_tag="theirs"))) is None
    assert layer.match_request(ack_for(invite, final)) is server
    assert [type(action).__name__ for action in layer.receive(ack_for(invite, final)) or []] == [
        "Deliver"
    ]
    assert layer.receive(request("INVITE", branch=None)) == []
    assert server.state is State.ACCEPTED


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


# -- a response that echoes our Via and CSeq lines (match_response's shortcut) -------------
def _sent(layer: TransactionLayer) -> list[tuple[ClientTransaction, Request]]:
    """Client transactions of several kinds, each with the request it sent; the last has
    let go of its request (``forget_request``), as a finished call's do."""
    invite_tx, _ = layer.create_client(request("INVITE", branch="z9hG4bKout1"))
    cancel_tx, _ = layer.create_client(make_cancel(invite_tx.request))
    bye_tx, _ = layer.create_client(request("BYE", branch="z9hG4bKout2", to_tag="b1"))
    # a copy as the proxy forwards it: its own Via on top of the caller's, one line each
    forwarded = request("INVITE", branch="z9hG4bKin", sent_by="pc33.example.com")
    forwarded.push_via("SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKout3;rport")
    forwarded_tx, _ = layer.create_client(forwarded)
    # and as sipfleet's proxy writes it: the branch last
    bye = request("BYE", branch="z9hG4bKin2", sent_by="pc33.example.com", to_tag="b1")
    bye.push_via("SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKout5.1f")
    forwarded_bye_tx, _ = layer.create_client(bye)
    forgotten_tx, _ = layer.create_client(request("INVITE", branch="z9hG4bKout4"))
    sent = [
        (tx, tx.request)
        for tx in (invite_tx, cancel_tx, bye_tx, forwarded_tx, forwarded_bye_tx, forgotten_tx)
    ]
    forgotten_tx.forget_request()
    return sent


def _by_full_key(
    sent: list[tuple[ClientTransaction, Request]], data: bytes
) -> ClientTransaction | type[ParseError] | None:
    """What the full key (the top Via and the CSeq parsed) matches in a fresh parse."""
    fresh = parse_message(data)
    assert isinstance(fresh, Response)
    try:
        key = response_key(fresh)
    except ParseError:
        return ParseError
    return {tx.key: tx for tx, _ in sent}.get(key) if key is not None else None


def _matched(layer: TransactionLayer, data: bytes) -> ClientTransaction | type[ParseError] | None:
    response = parse_message(data)
    assert isinstance(response, Response)
    try:
        return layer.match_response(response)
    except ParseError:
        return ParseError


def _vias_joined(lines: list[str]) -> list[str]:
    """The Via lines made one, comma-separated, as sipp's ``[last_Via:]`` echoes them."""
    at = next(i for i, line in enumerate(lines) if line.startswith("Via:"))
    while at + 1 < len(lines) and lines[at + 1].startswith("Via:"):
        lines[at] += ", " + lines.pop(at + 1)[4:].strip()
    return lines


def test_an_echoed_response_is_matched_without_parsing_its_via_or_cseq() -> None:
    layer = TransactionLayer()
    sent = _sent(layer)
    for tx, original in sent[:5]:
        for status in (100, 180, 200, 486):
            response = answer(original, status)
            assert layer.match_response(response) is tx
            assert "top-via" not in response._cache
            assert "cseq" not in response._cache
    for tx, original in sent[3:5]:  # our branch followed by a parameter, or last
        joined = _vias_joined(answer(original, 180).serialize().decode("latin-1").split("\r\n"))
        response = parse_message("\r\n".join(joined).encode("latin-1"))
        assert isinstance(response, Response)
        assert layer.match_response(response) is tx
        assert "top-via" not in response._cache
    forgotten_tx, original = sent[5]
    response = answer(original, 200)  # no request to compare with: the full key decides
    assert layer.match_response(response) is forgotten_tx
    assert "top-via" in response._cache


ECHO_EDITS = (
    ";received=192.0.2.1",
    ";rport=5080",
    ";BRANCH=z9hG4bKout2",
    ";branch=z9hG4bKout1",
    ",SIP/2.0/UDP 192.0.2.9",
    " ",
    "\t",
    ";",
    "=",
    ",",
    "x",
    "1",
    "INVITE",
    "CANCEL",
    "99999999999",
    "SIP/2.0/TCP ",
    "\r\n ",
    '"a,b"',
    "<sip:x,y>",
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pick=st.integers(0, 5),
    status=st.sampled_from([100, 180, 200, 487]),
    join=st.booleans(),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["via", "cseq", "v", "other"]),
            st.integers(0, 80),
            st.integers(0, 3),
            st.sampled_from(ECHO_EDITS),
        ),
        max_size=3,
    ),
)
def test_the_shortcut_matches_what_the_full_key_matches(
    pick: int, status: int, join: bool, edits: list[tuple[str, int, int, str]]
) -> None:
    """Echoed (its Via lines as they were, or joined), edited (a parameter added, case,
    spacing, a compact name, a Via joined on the line, a quote, a broken value) or
    pointing at another transaction: the same transaction, none, or the same
    ParseError as the full key gives."""
    layer = TransactionLayer()
    sent = _sent(layer)
    lines = answer(sent[pick][1], status).serialize().decode("latin-1").split("\r\n")
    if join:
        lines = _vias_joined(lines)
    where = {
        name: next(i for i, line in enumerate(lines) if line.startswith(prefix))
        for name, prefix in (("via", "Via:"), ("cseq", "CSeq:"), ("other", "From:"))
    }
    for which, at, cut, text in edits:
        if which == "v":  # the compact name on the top Via line
            index = where["via"]
            name, colon, value = lines[index].partition(":")
            lines[index] = "v" + colon + value if name == "Via" else lines[index]
            continue
        index = where[which]
        line = lines[index]
        at = min(at, len(line))
        lines[index] = line[:at] + text + line[at + cut :]
    data = "\r\n".join(lines).encode("latin-1")
    try:
        parse_message(data)
    except ParseError:
        return  # not a response the endpoint hands on at all
    assert _matched(layer, data) == _by_full_key(sent, data)
