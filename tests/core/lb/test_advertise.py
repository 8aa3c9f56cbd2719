"""An LB behind 1:1 NAT (a cloud host): it listens on a private address and clients reach
it at a public one, ``[lb] advertise``; what clients see names the public address."""

from __future__ import annotations

import pytest

from sipfleet.config import ConfigError, config_from_dict
from sipfleet.config.listen import parse_listen
from sipfleet.core.lb.router import AnswerHere, Forward
from sipfleet.core.lb.sides import Sides
from sipfleet.roles.lb import sides_of
from sipfleet.transport.base import Peer
from tests.core.lb.messages import INTERNAL, request, router

PRIVATE = "10.0.0.5"  # the host's own address (its NIC)
ADVERTISED = "203.0.113.10"  # where the cloud's 1:1 NAT maps it


def behind_nat(port: int | None = None) -> Sides:
    return Sides(
        [parse_listen(f"udp:{PRIVATE}:5060")],
        [parse_listen(f"udp:{INTERNAL}:5060")],
        (ADVERTISED, port),
    )


CLIENT = Peer("udp", "198.51.100.7", 40000, PRIVATE, 5060)


def host_of(route: str) -> str:
    return route.split("@", 1)[1].split(";", 1)[0]


def test_the_record_route_toward_the_client_names_the_public_address() -> None:
    decision = router(behind_nat()).route(request("INVITE"), CLIENT)
    assert isinstance(decision, Forward)
    outer, inner = decision.record_routes
    assert host_of(outer) == f"{ADVERTISED}:5060"
    assert host_of(inner) == f"{INTERNAL}:5060"  # the proxies reach the LB inside


def test_an_advertised_port_of_its_own() -> None:
    decision = router(behind_nat(port=15060)).route(request("INVITE"), CLIENT)
    assert isinstance(decision, Forward)
    assert host_of(decision.record_routes[0]) == f"{ADVERTISED}:15060"


def test_a_request_for_the_public_address_is_for_the_lb() -> None:
    options = request("OPTIONS", f"sip:{ADVERTISED}:5060", contact=None)
    assert isinstance(router(behind_nat()).route(options, CLIENT), AnswerHere)


def test_the_config_names_what_is_wrong() -> None:
    lb = {"listen": [f"udp:{PRIVATE}:5060"], "advertise": ADVERTISED}
    with pytest.raises(ConfigError, match=r"lb\.advertise: needs lb\.internal_listen"):
        config_from_dict({"lb": lb})
    with pytest.raises(ConfigError, match="advertise"):
        config_from_dict({"lb": {**lb, "advertise": "203.0.113.10:99999"}})
    config = config_from_dict({"lb": {**lb, "internal_listen": [f"udp:{INTERNAL}:5060"]}})
    assert sides_of(config).sent_by("external", "udp", "198.51.100.7") == f"{ADVERTISED}:5060"
    assert sides_of(config).sent_by("internal", "udp", INTERNAL) == f"{INTERNAL}:5060"
