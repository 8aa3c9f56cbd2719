"""A proxy-shaped walk through the API: one server and one client transaction."""

from __future__ import annotations

from sipfleet.sip import Request, Response
from sipfleet.sip.builders import make_response
from sipfleet.sip.transaction import Deliver, Terminated, TransactionLayer
from tests.sip.transaction.harness import FakeShell, ack_for, answer, request


def test_a_failed_call_through_a_stateful_proxy() -> None:
    layer = TransactionLayer()
    shell = FakeShell()
    invite = request("INVITE", transport="UDP", branch="z9hG4bKup")
    assert layer.receive(invite) is None
    upstream = layer.create_server(invite, peer=("198.51.100.7", 5060))
    shell.run(upstream.respond(make_response(invite, 100)))

    forwarded = invite.copy()
    forwarded.push_via("SIP/2.0/TCP proxy.example.com;branch=z9hG4bKdown")
    client, actions = layer.create_client(forwarded)
    servers = {client.key: upstream}  # the TU finds its server transaction by key
    shell.run(actions)

    def downstream_says(at: float, status: int) -> None:
        shell.advance_to(at)
        actions = layer.receive(answer(forwarded, status, to_tag="callee"))
        assert actions is not None
        for action in shell.run(actions):
            if isinstance(action, Deliver) and isinstance(action.message, Response):
                reply = action.message.copy()
                reply.pop_via()
                server = servers[action.transaction.key]
                shell.run(server.respond(reply))

    downstream_says(1.0, 180)
    downstream_says(3.0, 486)
    shell.advance_to(4.0)
    final = upstream.last_response
    assert isinstance(final, Response)
    shell.run(layer.receive(ack_for(invite, final)) or [])
    shell.advance_to(100)

    upstream_sent = [(at, m.status) for at, m in shell.sent() if isinstance(m, Response)]
    # 486 retransmitted by Timer G (UDP upstream) until the ACK at 4.0.
    assert upstream_sent == [(0, 100), (1.0, 180), (3.0, 486), (3.5, 486)]
    downstream_sent = [(at, m.method) for at, m in shell.sent() if isinstance(m, Request)]
    assert downstream_sent == [(0, "INVITE"), (3.0, "ACK")]  # TCP: no retransmissions
    ended = [at for at, action in shell.log if isinstance(action, Terminated)]
    assert ended == [3.0, 9.0]  # client at once (TCP, Timer D = 0); server after Timer I
    assert len(layer) == 0
