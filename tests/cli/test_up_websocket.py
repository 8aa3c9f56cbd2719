"""`sipfleet up` with no config serves browsers: WS and WSS beside its SIP ports."""

from __future__ import annotations

from pathlib import Path

from sipfleet.cli.up import with_tls, with_websocket
from sipfleet.config import config_from_dict


def listen_of(listen: list[str], tmp_path: Path) -> list[str]:
    config = config_from_dict({"lb": {"listen": listen}})
    served = with_websocket(with_tls(config, tmp_path))
    return [str(address) for address in served.lb.listen]


def test_ws_and_wss_follow_tls_on_the_first_host(tmp_path: Path) -> None:
    assert listen_of(["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"], tmp_path)[2:] == [
        "tls:127.0.0.1:5061",
        "ws:127.0.0.1:5062",
        "wss:127.0.0.1:5063",
    ]


def test_a_port_chosen_by_the_kernel_stays_so(tmp_path: Path) -> None:
    assert listen_of(["udp:127.0.0.1:0"], tmp_path)[-2:] == ["ws:127.0.0.1:0", "wss:127.0.0.1:0"]


def test_without_a_certificate_or_with_websocket_already_nothing_is_added() -> None:
    plain = config_from_dict({"lb": {"listen": ["udp:127.0.0.1:5060"]}})
    assert with_websocket(plain) is plain  # no certificate: no WSS, and WS alone is no default
    ws = config_from_dict({"lb": {"listen": ["udp:127.0.0.1:5060", "ws:127.0.0.1:80"]}})
    assert with_websocket(ws) is ws
