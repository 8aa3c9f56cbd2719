"""SIP over TLS on `sipfleet up` as users start it (no config file): the LB answers on
127.0.0.1:5061 with the self-signed certificate it made in its data directory, and real
phones (baresip, Linphone) register and call over TLS, trusting that certificate."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from tests.interop import phones
from tests.interop.agents.baresip import Baresip
from tests.interop.agents.linphone import Linphone, why_no_linphone
from tests.interop.lab import Embedded
from tests.interop.phones import Phone, establish, hang_up, registered, registered_contact

AGENT = Baresip
pytestmark = [pytest.mark.interop, pytest.mark.netns]

# A bare TLS client (Python's ssl): OPTIONS to the LB itself, the answer printed.
OPTIONS_OVER_TLS = r"""
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
with socket.create_connection(("127.0.0.1", 5061), timeout=5) as raw:
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(
            b"OPTIONS sip:127.0.0.1:5061 SIP/2.0\r\n"
            b"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-probe;rport\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=p1\r\n"
            b"To: <sip:127.0.0.1:5061>\r\nCall-ID: tls-probe\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        print(tls.version())
        print(tls.recv(4096).decode())
"""


def certificate(cluster: Embedded) -> Path:
    return cluster.data_dir / "tls" / "lb.crt"


def test_the_embedded_default_answers_on_tls_with_a_certificate_it_made(
    embedded: Embedded,
) -> None:
    banner = embedded.log_text()
    assert "tls:127.0.0.1:5061" in banner
    assert f"certificate {Path('/var/lib/sipfleet/tls/lb.crt')} (SHA-256 " in banner
    key = embedded.data_dir / "tls" / "lb.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    probe = embedded.ns.run(
        [sys.executable, "-c", OPTIONS_OVER_TLS, str(certificate(embedded))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    version, _, answer = probe.stdout.partition("\n")
    assert version in ("TLSv1.2", "TLSv1.3")
    assert answer.startswith("SIP/2.0 200 OK"), answer  # verified against the made certificate
    assert "Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-probe" in answer


@phones.needs_baresip
def test_baresip_registers_over_tls(phone_cluster: Embedded, phone: Phone) -> None:
    contact = registered_contact(phone_cluster, phone("alice", transport="tls"))
    assert "transport=tls" in contact


@phones.needs_baresip
def test_baresip_calls_over_tls_to_a_phone_on_udp_and_back(phone: Phone) -> None:
    alice = registered(phone("alice", transport="tls"))
    bob = registered(phone("bob", transport="udp"))
    establish(alice, bob)
    hang_up(bob, alice)
    establish(bob, alice)  # now alice is called, over her TLS connection
    invite = phones.only(alice.requests("INVITE", sent=False), "INVITE")
    assert invite.transport == "TLS"
    assert "transport=tls" in invite.header("record-route")
    hang_up(alice, bob)


@phones.needs_baresip  # the callee
@pytest.mark.skipif(why_no_linphone() is not None, reason=why_no_linphone() or "")
def test_linphone_over_tls_calls_baresip_and_is_called(
    phone_cluster: Embedded, phone: Phone
) -> None:
    Linphone.prepare_namespace(phone_cluster.ns)
    alice = registered(phone("alice", transport="tls", kind=Linphone))
    register = phones.only(alice.requests("REGISTER", sent=True), "REGISTER")
    assert register.transport == "TLS"
    bob = registered(phone("bob", transport="udp"))
    establish(alice, bob)
    hang_up(alice, bob)
    establish(bob, alice)
    hang_up(bob, alice)
