"""`sipfleet up --listen PRIVATE:PORT --advertise PUBLIC` on a cloud host behind 1:1 NAT:
the LB's client side is the NIC's address, clients are told the public one, the inside
stays on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipfleet.cli import build_parser
from sipfleet.cli.common import CliError
from sipfleet.cli.up import _config
from sipfleet.roles.lb import sides_of


def config_of(*argv: str) -> object:
    return _config(build_parser().parse_args(["up", *argv]))


def test_the_public_address_is_what_clients_are_told(tmp_path: Path) -> None:
    config = _config(
        build_parser().parse_args(
            ["up", "--data-dir", str(tmp_path), "--listen", "10.0.0.5:5060",
             "--advertise", "203.0.113.10"]
        )
    )  # fmt: skip
    assert config.lb.advertise == "203.0.113.10"
    sides = sides_of(config)
    assert sides.sent_by("external", "udp", "198.51.100.7") == "203.0.113.10:5060"
    assert sides.sent_by("internal", "udp", "127.0.0.1") == "127.0.0.1:5060"


def test_advertising_a_loopback_lb_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"lb\.advertise"):
        config_of("--data-dir", str(tmp_path), "--advertise", "203.0.113.10")
