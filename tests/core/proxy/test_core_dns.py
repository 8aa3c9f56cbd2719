"""RFC 3263 §4.3 in the proxy core, on the fake clock: a branch whose host name resolved
to several destinations goes on to the next one when a destination times out, fails in
transport or answers 503, in a new client transaction, before the branch counts as
failed. No sockets."""

from __future__ import annotations

from sipfleet.core.proxy.actions import DestinationDown, TrunkOutcome
from sipfleet.core.proxy.resolve import ResolveError
from sipfleet.core.proxy.targets import Target
from sipfleet.sip import Request, Response
from sipfleet.sip.transaction import Timer
from sipfleet.transport.base import Destination, Peer
from tests.core.proxy.harness import PROXY_HOST, PROXY_PORT, T1, FakeShell
from tests.core.proxy.messages import request, response_to

CARRIER = "sip:+4930123@carrier.example"
GW1, GW2 = Destination("udp", "203.0.113.1", 5060), Destination("udp", "203.0.113.2", 5070)


def resolved_to(*destinations: Destination, target: Target | None = None) -> FakeShell:
    shell = FakeShell()
    shell.receive(request("INVITE", CARRIER))
    shell.route(target or Target(CARRIER))
    (lookup,) = shell.resolves
    shell.run(shell.core.resolved(lookup.ref, list(destinations)))
    return shell


def sent_invites(shell: FakeShell) -> list[tuple[Request, Destination]]:
    """The INVITEs sent (and forgotten) since the last look, with where they went."""
    found, kept = [], []
    for message, destination in shell.sent:
        if isinstance(message, Request) and message.method == "INVITE":
            found.append((message, destination))
        else:
            kept.append((message, destination))
    shell.sent = kept
    return found


def peer(destination: Destination) -> Peer:
    return Peer("udp", destination.host, destination.port, PROXY_HOST, PROXY_PORT)


def test_a_503_sends_the_request_to_the_next_destination_in_a_new_transaction() -> None:
    shell = resolved_to(GW1, GW2)
    ((first, to1),) = sent_invites(shell)
    assert to1 == GW1
    shell.receive(response_to(first, 503), peer(GW1))
    ((second, to2),) = sent_invites(shell)
    assert to2 == GW2
    assert second.top_via.branch != first.top_via.branch
    assert [m.method for m in shell.downstream()] == ["ACK"]  # the 503's, to GW1
    assert not any(isinstance(a, DestinationDown) for a in shell.other)  # it is alive
    shell.receive(response_to(second, 200), peer(GW2))
    assert shell.upstream() == [100, 200]


def test_a_timeout_goes_on_to_the_next_destination() -> None:
    shell = resolved_to(GW1, GW2)
    sent_invites(shell)
    shell.advance(64 * T1)  # Timer B: GW1 said nothing (its retransmissions went out)
    invites = sent_invites(shell)
    assert {d for _, d in invites[:-1]} == {GW1}
    assert invites[-1][1] == GW2
    assert DestinationDown(GW1) in shell.other  # the resolver tries it last for a while
    shell.receive(response_to(invites[-1][0], 486), peer(GW2))
    assert shell.upstream() == [100, 486]


def test_a_transport_error_goes_on_to_the_next_destination() -> None:
    shell = resolved_to(GW1, GW2)
    sent_invites(shell)
    (call,) = shell.core.calls.values()
    assert call.responses is not None
    client = call.responses.branches[0].client
    assert client is not None
    shell.run(shell.core.send_failed(client))  # as the shell reports a send that failed
    assert [d for _, d in sent_invites(shell)] == [GW2]


def test_a_trunk_keeps_its_own_timeout_at_the_next_destination() -> None:
    shell = resolved_to(GW1, GW2, target=Target(CARRIER, gateway="carrier", timeout=2.0))
    ((first, _),) = sent_invites(shell)
    shell.receive(response_to(first, 503), peer(GW1))
    sent_invites(shell)
    (call,) = shell.core.calls.values()
    assert call.responses is not None
    client = call.responses.branches[0].client
    assert client is not None
    assert shell.timers[(client, Timer.C)] == shell.now + 2.0


def test_when_every_destination_fails_the_branch_fails_as_the_last_one_did() -> None:
    shell = resolved_to(GW1, GW2)
    ((first, _),) = sent_invites(shell)
    shell.receive(response_to(first, 503), peer(GW1))
    ((second, _),) = sent_invites(shell)
    shell.receive(response_to(second, 503), peer(GW2))
    assert shell.upstream() == [100, 500]  # §16.7: a 503 never goes upstream


def test_other_failures_do_not_go_on_to_the_next_destination() -> None:
    shell = resolved_to(GW1, GW2)
    ((first, _),) = sent_invites(shell)
    shell.receive(response_to(first, 404), peer(GW1))
    assert sent_invites(shell) == []
    assert shell.upstream() == [100, 404]


def test_a_name_not_in_dns_fails_the_branch_with_a_reason_naming_it() -> None:
    shell = FakeShell()
    shell.receive(request("INVITE", "sip:bob@nowhere.example"))
    shell.route("sip:bob@nowhere.example")
    (lookup,) = shell.resolves
    shell.run(
        shell.core.resolved(lookup.ref, ResolveError("nowhere.example does not exist in DNS", 404))
    )
    (final,) = [m for m, _ in shell.sent if isinstance(m, Response) and m.status >= 200]
    assert final.status == 404
    assert "nowhere.example" in final.reason


def test_a_trunk_whose_name_is_not_in_dns_fails_as_unreachable() -> None:
    shell = FakeShell()
    shell.receive(request("INVITE", CARRIER))
    shell.route(Target(CARRIER, gateway="carrier"))
    (lookup,) = shell.resolves
    missing = ResolveError("carrier.example does not exist in DNS", 404)
    shell.run(shell.core.resolved(lookup.ref, missing))
    (outcome,) = [a for a in shell.other if isinstance(a, TrunkOutcome)]
    assert (outcome.gateway, outcome.status) == ("carrier", 503)  # the next trunk is tried
