"""Where the LB sends a request, and what it adds on the way (sans-IO)."""

from __future__ import annotations

import pytest

from sipfleet.config.listen import parse_listen
from sipfleet.core.lb.keepalive import contact_digest
from sipfleet.core.lb.router import AnswerHere, Forward, HandOff, Reject, udp_keeper
from sipfleet.core.lb.sides import Sides
from sipfleet.sip import SipUri, parse_address
from sipfleet.sip.dialog_token import Dialog
from sipfleet.sip.flow import Flow
from sipfleet.transport.base import Destination, Peer
from tests.core.lb.messages import (
    INTERNAL,
    LB_ID,
    PUBLIC,
    TOKENS,
    client,
    from_proxy,
    one_side,
    pools,
    request,
    router,
)


def forwarded(decision: object) -> Forward:
    assert isinstance(decision, Forward), decision
    return decision


def token_of(route: str) -> str:
    uri = parse_address(route, "Route").uri
    assert isinstance(uri, SipUri)
    assert uri.user
    return uri.user


def host_of(route: str) -> str:
    uri = parse_address(route, "Route").uri
    assert isinstance(uri, SipUri)
    return f"{uri.host}:{uri.port}"


def test_register_goes_to_the_registrar_with_a_path_naming_the_clients_flow() -> None:
    register = request("REGISTER", "sip:example.com", contact="<sip:alice@10.0.1.2:5060>")
    decision = forwarded(router().route(register, client()))
    assert decision.destination == Destination("udp", "127.0.0.1", 5070, None, (INTERNAL, 5060))
    assert decision.sent_by == f"{INTERNAL}:5060"  # the registrar answers the internal side
    assert decision.path is not None
    assert host_of(decision.path) == f"{INTERNAL}:5060"
    token = token_of(decision.path)
    # Via 10.0.1.2 but the packet came from 198.51.100.7: behind NAT, reach it by the flow.
    keeper = udp_keeper("198.51.100.7", 40000)
    assert TOKENS.decode(token) == Flow("udp", "198.51.100.7", 40000, 0, keeper, True, LB_ID)
    digest = contact_digest("sip:alice@10.0.1.2:5060")
    assert decision.via_params == f";lbf={token};lbc={digest}"
    assert decision.record_routes == ()


def test_the_same_udp_client_gets_the_same_token_in_every_worker() -> None:
    """Datagrams are spread over workers: a refresh or an un-REGISTER that lands in another
    worker must name the same flow, or the flow is pinged twice and never ended."""
    register = request("REGISTER", "sip:example.com", contact="<sip:alice@10.0.1.2:5060>")
    paths = [forwarded(router(worker=w).route(register, client())).path for w in (0, 1, 3)]
    assert len({token_of(p) for p in paths if p is not None}) == 1


def test_a_client_not_behind_nat_is_reached_at_its_contact() -> None:
    register = request(
        "REGISTER", via="198.51.100.7:40000", contact="<sip:alice@198.51.100.7:40000>"
    )
    decision = forwarded(router().route(register, client()))
    assert decision.path is not None
    flow = TOKENS.decode(token_of(decision.path))
    assert flow is not None
    assert not flow.reach_by_flow


def test_outbound_registration_gets_ob_in_its_path() -> None:
    register = request(
        "REGISTER",
        via="198.51.100.7:40000",
        contact='<sip:alice@198.51.100.7:40000>;reg-id=1;+sip.instance="<urn:uuid:1>"',
    )
    decision = forwarded(router().route(register, client()))
    assert decision.path is not None
    assert decision.path.endswith(";lr;ob>")
    flow = TOKENS.decode(token_of(decision.path))
    assert flow is not None
    assert flow.reach_by_flow


def test_tcp_client_flow_names_its_connection_and_worker() -> None:
    connection = (3 << 32) | 17
    register = request("REGISTER", transport="TCP", via="198.51.100.7:40000")
    decision = forwarded(router(worker=1).route(register, client(tcp=connection)))
    assert decision.path is not None
    flow = TOKENS.decode(token_of(decision.path))
    assert flow == Flow("tcp", "198.51.100.7", 40000, 17, 3, True, LB_ID)


def test_invite_is_record_routed_twice_across_the_sides() -> None:
    invite = request("INVITE")
    decision = forwarded(router().route(invite, client()))
    assert decision.destination.port in (5080, 5081)
    outer, inner = decision.record_routes  # added in this order: the inner one ends on top
    assert host_of(outer) == f"{PUBLIC}:5060"
    assert host_of(inner) == f"{INTERNAL}:5060"
    assert token_of(outer) == token_of(inner)
    flow = TOKENS.decode(token_of(outer), "call-1@10.0.1.2", ("a1", None))
    assert flow is not None
    assert (flow.host, flow.port) == ("198.51.100.7", 40000)
    # Bound to this dialog: in another call, or without one, the token is worthless.
    assert TOKENS.decode(token_of(outer), "call-2@10.0.1.2", ("a1", None)) is None
    assert TOKENS.decode(token_of(outer)) is None


def test_one_side_is_record_routed_once() -> None:
    decision = forwarded(router(one_side()).route(request("INVITE"), client()))
    (only,) = decision.record_routes
    assert host_of(only) == f"{INTERNAL}:5060"


def test_requests_that_create_no_dialog_get_no_record_route() -> None:
    for method, tag in (("OPTIONS", None), ("MESSAGE", None), ("INVITE", "b1"), ("BYE", "b1")):
        decision = forwarded(router().route(request(method, to_tag=tag), client()))
        assert decision.record_routes == ()
        assert decision.path is None


def test_call_ids_spread_over_the_proxies_and_stay_put() -> None:
    lb = router()
    chosen = {
        forwarded(lb.route(request("INVITE", call_id=f"c{n}"), client())).destination.port
        for n in range(50)
    }
    assert chosen == {5080, 5081}
    again = forwarded(lb.route(request("BYE", call_id="c7", to_tag="x"), client()))
    first = forwarded(lb.route(request("INVITE", call_id="c7"), client()))
    assert again.destination == first.destination


def toward_client_routes(flow: Flow) -> tuple[str, str]:
    token = TOKENS.encode(flow)
    return f"<sip:{token}@{INTERNAL}:5060;lr>", f"<sip:{token}@{PUBLIC}:5060;lr>"


def test_request_from_the_cluster_goes_to_the_flow_in_the_token() -> None:
    flow = Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID)
    invite = request("INVITE", "sip:alice@10.0.1.2:5060", routes=toward_client_routes(flow))
    decision = forwarded(router().route(invite, from_proxy()))
    assert decision.destination == Destination("udp", "198.51.100.7", 40000, None, (PUBLIC, 5060))
    assert decision.sent_by == f"{PUBLIC}:5060"
    assert decision.pop_routes == 2
    inner, outer = decision.record_routes  # the outer (public) one ends on top, facing the UA
    assert host_of(inner) == f"{INTERNAL}:5060"
    assert host_of(outer) == f"{PUBLIC}:5060"


def test_request_from_the_flow_itself_goes_on_toward_the_cluster() -> None:
    flow = Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID)
    routes = (*reversed(toward_client_routes(flow)), "<sip:127.0.0.1:5081;lr>")
    bye = request("BYE", to_tag="b1", routes=routes)
    decision = forwarded(router().route(bye, client()))
    assert decision.pop_routes == 2
    assert decision.destination.port == 5081  # the next Route names a pool target


def test_a_next_route_that_is_no_pool_target_is_not_followed() -> None:
    flow = Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID)
    routes = (*reversed(toward_client_routes(flow)), "<sip:192.0.2.66:5060;lr>")
    decision = forwarded(router().route(request("BYE", to_tag="b", routes=routes), client()))
    assert decision.destination.host == "127.0.0.1"  # a proxy, which may follow it or not


@pytest.mark.parametrize("mangle", ["forged", "flip", "other-secret"])
def test_a_token_that_does_not_verify_gets_403(mangle: str) -> None:
    good = TOKENS.encode(Flow("udp", "192.0.2.99", 5060, 0, 0, True, LB_ID))
    if mangle == "forged":
        token = "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    elif mangle == "flip":
        token = good[:5] + ("A" if good[5] != "A" else "B") + good[6:]
    else:
        from sipfleet.sip.flow import FlowTokens

        token = FlowTokens(b"another cluster").encode(Flow("udp", "192.0.2.99", 5060))
    invite = request("INVITE", routes=(f"<sip:{token}@{PUBLIC}:5060;lr>",))
    decision = router().route(invite, client())
    assert isinstance(decision, Reject)
    assert decision.status == 403
    assert decision.why is not None


def test_tcp_flow_of_another_worker_is_handed_over() -> None:
    flow = Flow("tcp", "198.51.100.7", 40000, 17, 1, True, LB_ID)
    invite = request("INVITE", routes=toward_client_routes(flow))
    assert router(worker=0).route(invite, from_proxy()) == HandOff(1)


def test_tcp_flow_goes_over_its_connection_or_gets_430() -> None:
    flow = Flow("tcp", "198.51.100.7", 40000, 17, 1, True, LB_ID)
    invite = request("INVITE", routes=toward_client_routes(flow))
    connection = (1 << 32) | 17
    decision = forwarded(router(worker=1, connections=(connection,)).route(invite, from_proxy()))
    assert decision.destination == Destination("tcp", "198.51.100.7", 40000, connection)
    _, outer = decision.record_routes
    assert outer.endswith(";lr;transport=tcp>")  # the UA keeps its connection for the dialog
    gone = router(worker=1).route(invite, from_proxy())
    assert isinstance(gone, Reject)
    assert gone.status == 430


def test_client_reachable_directly_gets_its_contact_port_on_its_own_address() -> None:
    flow = Flow("udp", "198.51.100.7", 40000, 0, 0, False, LB_ID)
    routes = toward_client_routes(flow)
    invite = request("INVITE", "sip:alice@198.51.100.7:5062", routes=routes)
    from_cluster = forwarded(router().route(invite, from_proxy()))
    assert (from_cluster.destination.host, from_cluster.destination.port) == ("198.51.100.7", 5062)
    # A Request-URI naming another host does not pick the address: the flow's is used.
    elsewhere = request("INVITE", "sip:victim@192.0.2.1:5060", routes=routes)
    decision = forwarded(router().route(elsewhere, from_proxy()))
    assert (decision.destination.host, decision.destination.port) == ("198.51.100.7", 40000)


def test_a_token_replayed_by_a_client_goes_to_the_cluster_never_down_the_flow() -> None:
    flow = Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID)
    routes = toward_client_routes(flow)
    stranger = client("192.0.2.200", 5060)
    for method, tag in (("INVITE", None), ("MESSAGE", None), ("BYE", "b1")):
        replayed = request(method, "sip:victim@198.51.100.7:40000", routes=routes, to_tag=tag)
        decision = forwarded(router().route(replayed, stranger))
        assert decision.destination.port in (5080, 5081)  # a proxy, which authenticates it
        assert decision.pop_routes == 2


def dialog_routes(flow: Flow, call_id: str = "call-1@10.0.1.2", tag: str = "a1") -> tuple[str, str]:
    """The Record-Route pair the LB gave the caller's flow in dialog (call_id, tag)."""
    token = TOKENS.encode(flow, Dialog(call_id, tag))
    return f"<sip:{token}@{INTERNAL}:5060;lr>", f"<sip:{token}@{PUBLIC}:5060;lr>"


def test_a_record_route_token_steers_only_its_own_dialog() -> None:
    caller = Flow("udp", "198.51.100.7", 40000, 0, 0, True, LB_ID)
    routes = dialog_routes(caller)  # made when alice's INVITE (From tag a1) passed
    # The callee's BYE toward alice: alice's tag is now the To tag.
    bye = request("BYE", "sip:alice@10.0.1.2:5060", routes=routes, to_tag="a1")
    bye.set_header("From", "<sip:bob@example.com>;tag=b9")
    decision = forwarded(router().route(bye, from_proxy()))
    assert (decision.destination.host, decision.destination.port) == ("198.51.100.7", 40000)
    # The same Routes in another call, even from the cluster: refused, not followed.
    other = request("BYE", routes=routes, to_tag="a1", call_id="another-call")
    refused = router().route(other, from_proxy())
    assert isinstance(refused, Reject)
    assert refused.status == 403
    # ... and from a client too.
    assert isinstance(router().route(other, client("192.0.2.200", 5060)), Reject)


def test_one_side_tells_the_nodes_by_their_exact_udp_address() -> None:
    """One host: every process sends from 127.0.0.1. A phone there with another port,
    or a node's address over TCP, is a client; only the pool targets' UDP listen
    addresses are the cluster."""
    lb = router(one_side())
    flow = Flow("udp", "127.0.0.1", 40000, 0, 0, True, LB_ID)
    token = TOKENS.encode(flow, Dialog("call-1@10.0.1.2", "a1"))
    routes = (f"<sip:{token}@{INTERNAL}:5060;lr>", "<sip:127.0.0.1:5080;lr>")
    node = Peer("udp", INTERNAL, 5080, INTERNAL, 5060)
    toward_alice = request("BYE", routes=routes[:1], to_tag="a1")
    assert forwarded(lb.route(toward_alice, node)).destination.port == 40000
    # Alice's own BYE, sent from another port than she registered from (her Contact's):
    for phone in (
        Peer("udp", INTERNAL, 40002, INTERNAL, 5060),
        Peer("tcp", INTERNAL, 5080, INTERNAL, 5060, 9),
    ):
        bye = request("BYE", routes=routes, to_tag="b1")
        decision = forwarded(lb.route(bye, phone))
        assert decision.destination.port == 5080  # toward the cluster, her Route popped
        assert decision.pop_routes == 1


def test_no_live_target_is_503_with_retry_after() -> None:
    empty = pools("sip:127.0.0.1:5080")
    for target in empty.targets.values():
        target.health = "down"
    decision = router(made=empty).route(request("INVITE"), client())
    assert isinstance(decision, Reject)
    assert decision.status == 503
    assert ("Retry-After", "5") in decision.headers


def test_options_for_the_lb_itself_is_answered_here() -> None:
    assert router().route(request("OPTIONS", f"sip:{PUBLIC}:5060"), client()) == AnswerHere()
    echo = router().route(request("OPTIONS", f"sip:echo@{PUBLIC}:5060"), client())
    assert isinstance(echo, Forward)


def test_draining_proxy_gets_no_new_call_ids_but_keeps_its_dialogs() -> None:
    draining = pools(draining=("sip:127.0.0.1:5081",))
    lb = router(made=draining)
    new = {
        forwarded(lb.route(request("INVITE", call_id=f"c{n}"), client())).destination.port
        for n in range(40)
    }
    assert new == {5080}
    everyone = router()
    kept = [
        n
        for n in range(40)
        if forwarded(everyone.route(request("INVITE", call_id=f"c{n}"), client())).destination.port
        == 5081
    ]
    assert kept
    for n in kept:
        bye = request("BYE", call_id=f"c{n}", to_tag="b")
        assert forwarded(lb.route(bye, client())).destination.port == 5081


def test_one_side_is_record_routed_twice_when_the_transport_changes() -> None:
    tcp_client = client(tcp=5)
    invite = request("INVITE", transport="TCP", via="198.51.100.7:40000")
    outer, inner = forwarded(router(one_side()).route(invite, tcp_client)).record_routes
    assert outer.endswith(";lr;transport=tcp>")  # the client keeps its connection
    assert inner.endswith(";lr>")  # the proxy talks UDP
    assert token_of(outer) == token_of(inner)


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("INVITE", ("Route: <sip:@@@;lr>",)),
        ("REGISTER", ("Contact: <sip:alice@10.0.1.2;expires=>",)),
    ],
)
def test_broken_headers_raise_parse_errors_for_the_endpoint_to_answer(
    method: str, extra: tuple[str, ...]
) -> None:
    from sipfleet.sip import ParseError

    broken = request(method, contact=None, extra=extra)
    with pytest.raises(ParseError) as caught:
        router().route(broken, client())
    assert caught.value.status == 400


def test_a_tcp_client_not_behind_nat_is_reached_at_its_contact_once_its_connection_closed() -> None:
    """A phone that registers over TCP, closes the connection and listens at its Contact
    (no outbound, no NAT): a new connection to the Contact, on its own IP only."""
    flow = Flow("tcp", "198.51.100.7", 40000, 17, 1, False, LB_ID)
    routes = toward_client_routes(flow)
    invite = request("INVITE", "sip:bob@198.51.100.7:6003;transport=tcp", routes=routes)
    decision = forwarded(router(worker=1).route(invite, from_proxy()))
    assert decision.destination == Destination("tcp", "198.51.100.7", 6003)
    elsewhere = request("INVITE", "sip:bob@192.0.2.1:6003;transport=tcp", routes=routes)
    refused = router(worker=1).route(elsewhere, from_proxy())
    assert isinstance(refused, Reject)
    assert refused.status == 430
    # While its connection lasts, that is used.
    connection = (1 << 32) | 17
    alive = forwarded(router(worker=1, connections=(connection,)).route(invite, from_proxy()))
    assert alive.destination.connection_id == connection


@pytest.mark.parametrize(
    ("via", "contact", "by_flow"),
    [
        ("198.51.100.7:5060", "<sip:bob@198.51.100.7:6003;transport=tcp>", False),
        ("10.0.1.2:5060", "<sip:bob@10.0.1.2:6003;transport=tcp>", True),  # NAT
        ("198.51.100.7:5060", "<sip:bob@198.51.100.7;transport=tcp;ob>", True),  # outbound
    ],
)
def test_a_tcp_flow_is_reached_by_its_connection_only_behind_nat_or_outbound(
    via: str, contact: str, by_flow: bool
) -> None:
    register = request("REGISTER", "sip:example.com", via=via, transport="TCP", contact=contact)
    decision = forwarded(router().route(register, client(tcp=(1 << 32) | 5)))
    assert decision.path is not None
    flow = TOKENS.decode(token_of(decision.path))
    assert flow is not None
    assert flow.transport == "tcp"
    assert flow.reach_by_flow is by_flow


def tls_sides() -> Sides:
    return Sides(
        [parse_listen(f"udp:{PUBLIC}:5060"), parse_listen(f"tls:{PUBLIC}:5061")],
        [parse_listen(f"udp:{INTERNAL}:5060")],
    )


def test_a_tls_client_registers_with_a_tls_flow_and_calls_record_routed_over_tls() -> None:
    connection = (2 << 32) | 5
    peer = Peer("tls", "198.51.100.7", 40000, PUBLIC, 5061, connection)
    register = request("REGISTER", transport="TLS", via="198.51.100.7:40000")
    decision = forwarded(router(tls_sides(), worker=2).route(register, peer))
    assert decision.path is not None
    assert decision.path.startswith("<sip:")
    assert TOKENS.decode(token_of(decision.path)) == Flow(
        "tls", "198.51.100.7", 40000, 5, 2, True, LB_ID
    )
    invite = request("INVITE", "sips:bob@example.com", transport="TLS", via="198.51.100.7:40000")
    outer, inner = forwarded(router(tls_sides(), worker=2).route(invite, peer)).record_routes
    # toward the client: sips (RFC 3261 §16.6 step 4), the TLS listener; inside: plain sip
    assert outer.startswith("<sips:")
    assert outer.endswith(f"@{PUBLIC}:5061;lr;transport=tls>")
    assert inner.startswith("<sip:")
    assert inner.endswith(f"@{INTERNAL}:5060;lr>")


def test_a_tls_flow_goes_over_its_connection_or_gets_430_never_a_new_connection() -> None:
    flow = Flow("tls", "198.51.100.7", 40000, 17, 1, False, LB_ID)  # not behind NAT
    invite = request(
        "INVITE", "sip:alice@198.51.100.7:40000;transport=tls", routes=toward_client_routes(flow)
    )
    connection = (1 << 32) | 17
    routing = router(tls_sides(), worker=1, connections=(connection,))
    decision = forwarded(routing.route(invite, from_proxy()))
    assert decision.destination == Destination("tls", "198.51.100.7", 40000, connection)
    assert decision.sent_by == f"{PUBLIC}:5061"
    _, outer = decision.record_routes
    assert outer.endswith(f"{PUBLIC}:5061;lr;transport=tls>")
    gone = router(tls_sides(), worker=1).route(invite, from_proxy())
    assert isinstance(gone, Reject)
    assert gone.status == 430
