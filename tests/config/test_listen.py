"""Listen addresses for SIP over WebSocket: where they may be, what they need."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sipfleet.config.listen import ListenAddress, parse_listen
from sipfleet.config.model import LbSection, ProxySection, RegistrarSection


def test_ws_and_wss_addresses_parse() -> None:
    assert parse_listen("ws:127.0.0.1:8080") == ListenAddress("ws", "127.0.0.1", 8080)
    assert parse_listen("WSS:[::1]:8443") == ListenAddress("wss", "::1", 8443)
    assert str(parse_listen("wss:[::1]:8443")) == "wss:[::1]:8443"


def test_an_unknown_transport_names_the_ones_there_are() -> None:
    with pytest.raises(ValueError, match="transport must be udp, tcp, tls, ws or wss"):
        parse_listen("sctp:127.0.0.1:5060")


def test_wss_needs_the_tls_certificate_and_key() -> None:
    with pytest.raises(ValidationError, match=r"lb\.tls_certificate: must be set for the wss"):
        LbSection(listen=["udp:127.0.0.1:5060", "wss:127.0.0.1:8443"])
    ws_only = LbSection(listen=["udp:127.0.0.1:5060", "ws:127.0.0.1:8080"])
    assert [a.transport for a in ws_only.listen] == ["udp", "ws"]  # ws needs nothing more


@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_websocket_is_for_clients_only(transport: str) -> None:
    address = f"{transport}:127.0.0.1:8080"
    with pytest.raises(ValidationError, match=f"registrar.listen: {transport} is served by"):
        RegistrarSection(listen=[address])
    with pytest.raises(ValidationError, match=f"proxy.listen: {transport} is served by"):
        ProxySection(listen=[address])
    with pytest.raises(ValidationError, match=f"lb.internal_listen: {transport} is for clients"):
        LbSection(listen=["udp:127.0.0.1:5060"], internal_listen=[address])
