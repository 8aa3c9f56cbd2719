"""Two LBs, one cluster secret: a flow token made by the other LB (RFC 5626 §5.3)."""

from __future__ import annotations

import pytest

from sipfleet.core.lb.router import Forward, Reject
from sipfleet.sip.flow import Flow
from tests.core.lb.messages import INTERNAL, LB_ID, PUBLIC, TOKENS, client, from_proxy, request
from tests.core.lb.messages import router as make_router

OTHER_LB = LB_ID + 1


def path_routes(flow: Flow) -> tuple[str, str]:
    token = TOKENS.encode(flow)
    return f"<sip:{token}@{INTERNAL}:5060;lr>", f"<sip:{token}@{PUBLIC}:5060;lr>"


@pytest.mark.parametrize(
    "flow",
    [
        Flow("udp", "198.51.100.7", 40000, 0, 0, True, OTHER_LB),
        # connection 17 of worker 0 is open here, but it is another client's
        Flow("tcp", "198.51.100.7", 40000, 17, 0, True, OTHER_LB),
    ],
    ids=["udp", "tcp"],
)
def test_a_node_sending_down_another_lbs_flow_gets_430_flow_failed(flow: Flow) -> None:
    invite = request("INVITE", "sip:alice@10.0.1.2:5060", routes=path_routes(flow))
    decision = make_router(connections=(17,)).route(invite, from_proxy())
    assert decision == Reject(430, "Flow Failed")


def test_the_same_flow_of_this_lb_is_followed() -> None:
    flow = Flow("tcp", "198.51.100.7", 40000, 17, 0, True, LB_ID)
    invite = request("INVITE", "sip:alice@10.0.1.2:5060", routes=path_routes(flow))
    decision = make_router(connections=(17,)).route(invite, from_proxy())
    assert isinstance(decision, Forward)
    assert decision.destination.connection_id == 17


def test_a_client_presenting_another_lbs_token_goes_to_the_cluster_as_before() -> None:
    """A client's Route is checked and removed, never followed: which LB made it does not
    matter there."""
    flow = Flow("udp", "198.51.100.7", 40000, 0, 0, True, OTHER_LB)
    bye = request("BYE", "sip:bob@10.0.1.9:5060", routes=path_routes(flow)[1:])
    decision = make_router().route(bye, client())
    assert isinstance(decision, Forward)
    assert decision.pop_routes == 1
