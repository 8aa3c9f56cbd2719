"""OPTIONS probes of gateways: with several workers, only Call-IDs this worker owns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.probes import OptionsProber
from sipfleet.core.proxy.resolve import Resolver
from sipfleet.sip import Request, parse_message
from sipfleet.transport.base import Destination
from sipfleet.transport.steering import owner_of, owner_of_call_id


@dataclass
class Sent:
    messages: list[tuple[bytes, Destination]] = field(default_factory=list)

    def sent_by(self, transport: str, remote_host: str | None = None) -> str:
        return "127.0.0.1:5080"

    def send_bytes(self, data: bytes, destination: Destination) -> None:
        self.messages.append((data, destination))


def test_probes_use_only_call_ids_their_worker_owns() -> None:
    endpoint = Sent()
    prober = OptionsProber(cast(SipEndpoint, endpoint), Resolver())
    prober.owns_call_id = lambda call_id: owner_of_call_id(call_id.encode(), 2) == 1
    for n in range(20):
        prober.probe(f"gw{n}", "sip:192.0.2.1:5060", lambda status: None)
    assert len(endpoint.messages) == 20
    for data, _ in endpoint.messages:
        assert owner_of(data, 2) == 1
        request = parse_message(data)
        assert isinstance(request, Request)
        assert request.method == "OPTIONS"


def test_one_worker_owns_every_probe() -> None:
    endpoint = Sent()
    prober = OptionsProber(cast(SipEndpoint, endpoint), Resolver())
    prober.probe("gw", "sip:192.0.2.1:5060", lambda status: None)
    prober.probe("gw", "sip:192.0.2.1:5060", lambda status: None)
    assert [b"CSeq: 1 OPTIONS" in d for d, _ in endpoint.messages] == [True, False]
