"""Which URIs and Vias name the proxy (sipfleet.core.proxy.addresses)."""

from __future__ import annotations

import pytest

from sipfleet.core.proxy.addresses import OwnAddresses, split_alias
from sipfleet.sip import parse_uri, parse_via
from sipfleet.sip.uri import SipUri

OWN = OwnAddresses.build(
    [("192.0.2.1", 5080), ("::1", 5080)], ["Proxy.Example.com", "[2001:db8::1]:5090"]
)


def names(uri: str) -> bool:
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri)
    return OWN.names(parsed)


def test_listen_address_and_port_name_us() -> None:
    assert names("sip:192.0.2.1:5080;lr")
    assert not names("sip:192.0.2.1;lr")  # 5060 is not our port
    assert not names("sip:192.0.2.1:5081")


def test_ipv6_compares_by_address() -> None:
    assert names("sip:[0:0::1]:5080")
    assert names("sip:[2001:db8:0::1]:5090")


def test_alias_without_port_covers_listen_ports_and_5060_case_insensitively() -> None:
    assert names("sip:proxy.example.COM")
    assert names("sip:proxy.example.com:5080")
    assert not names("sip:proxy.example.com:5070")


def test_sips_defaults_to_5061() -> None:
    assert not names("sips:proxy.example.com")


def test_vias_of_ours() -> None:
    assert OWN.sent(parse_via("SIP/2.0/UDP 192.0.2.1:5080;branch=z9hG4bKx"))
    assert not OWN.sent(parse_via("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx"))


def test_bad_alias_port_is_named() -> None:
    with pytest.raises(ValueError, match=r"proxy\.aliases"):
        split_alias("host:port")


def test_siblings_from_the_pool_name_routes_but_not_our_vias() -> None:
    """Another proxy of the pool Record-Routed the dialog: its Route is taken as ours, but a
    Via it wrote is not (loop detection stays about this proxy)."""
    pooled = OWN.with_siblings(["sip:192.0.2.9:5080", "sip:[2001:db8::9]"])
    assert pooled.names(parse_uri("sip:192.0.2.9:5080;lr"))  # type: ignore[arg-type]
    assert pooled.names(parse_uri("sip:[2001:DB8:0::9];lr"))  # type: ignore[arg-type]
    assert not pooled.names(parse_uri("sip:192.0.2.9:5070;lr"))  # type: ignore[arg-type]
    assert not pooled.sent(parse_via("SIP/2.0/UDP 192.0.2.9:5080;branch=z9hG4bKx"))
    assert pooled.names(parse_uri("sip:proxy.example.com:5080"))  # type: ignore[arg-type]
