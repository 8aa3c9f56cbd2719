"""NAT detection (sipfleet.routing.nat)."""

from __future__ import annotations

import pytest

from sipfleet.routing.nat import any_private, behind_nat, contact_hosts, is_private, nat_evidence
from sipfleet.sip import Request


def request(via: str, contact: str = "<sip:alice@203.0.113.5:5060>") -> Request:
    return Request.build(
        "REGISTER",
        "sip:example.com",
        [
            ("Via", via),
            ("From", "<sip:alice@example.com>;tag=1"),
            ("To", "<sip:alice@example.com>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 REGISTER"),
            ("Contact", contact),
        ],
    )


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("10.1.2.3", True),
        ("172.20.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.9", True),
        ("169.254.3.3", True),
        ("fd00::1", True),
        ("[fe80::1]", True),
        ("203.0.113.5", False),
        ("8.8.8.8", False),
        ("2001:db8::1", False),
        ("pbx.example.com", False),
    ],
)
def test_private_addresses(host: str, private: bool) -> None:
    assert is_private(host) is private


def test_client_with_public_address_is_not_behind_nat() -> None:
    evidence = nat_evidence(
        request("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK1"), "203.0.113.5", 5060
    )
    assert not evidence.behind_nat


def test_via_address_differs_from_source() -> None:
    evidence = nat_evidence(
        request("SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK1", "<sip:alice@192.168.1.20:5060>"),
        "203.0.113.9",
        40001,
    )
    assert evidence.via_address_differs
    assert evidence.via_port_differs
    assert evidence.private_contact
    assert evidence.behind_nat


def test_port_translation_alone_is_nat() -> None:
    evidence = nat_evidence(
        request("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK1"), "203.0.113.5", 61000
    )
    assert evidence.behind_nat


def test_private_contact_on_a_private_network_is_not_nat() -> None:
    evidence = nat_evidence(
        request("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1", "<sip:alice@10.0.0.5>"),
        "10.0.0.5",
        5060,
    )
    assert not evidence.behind_nat


@pytest.mark.parametrize(
    ("via", "contact", "source"),
    [
        ("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK1", "<sip:a@203.0.113.5>", "203.0.113.5"),
        ("SIP/2.0/UDP 203.0.113.5;branch=z9hG4bK1", "<sip:a@203.0.113.5>", "203.0.113.5"),
        ("SIP/2.0/UDP 203.0.113.5:5062;branch=z9hG4bK1", "<sip:a@203.0.113.5>", "203.0.113.5"),
        ("SIP/2.0/UDP 192.168.1.2:5060;branch=z9hG4bK1", "<sip:a@203.0.113.5>", "203.0.113.5"),
        ("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK1", "<sip:a@192.168.1.2>", "203.0.113.5"),
        ("SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1", "<sip:a@192.168.1.2>", "10.0.0.2"),
        ("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1", "<sip:a@[fd00::1]>", "2001:db8::1"),
        ("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1", "<sip:a@[fd00::1]>", "2001:db8::2"),
        ("SIP/2.0/UDP pbx.example.com:5060;branch=z9hG4bK1", "<tel:+1555>", "203.0.113.5"),
    ],
)
def test_behind_nat_from_its_parts_as_the_evidence_says(
    via: str, contact: str, source: str
) -> None:
    """What the LB's fast path asks (the parts read apart) against NatEvidence."""
    made = request(via, contact)
    evidence = nat_evidence(made, source, 5060)
    top = made.top_via
    private_hosts = any_private(contact_hosts(made))
    parts = behind_nat(top.host.strip("[]"), top.port or 5060, private_hosts, source, 5060)
    assert parts is evidence.behind_nat
