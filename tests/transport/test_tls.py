"""TLS over real sockets: the listener, its certificate, reloading it, its errors."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from sipfleet.config.listen import parse_listen
from sipfleet.transport import Destination, TransportError, TransportLimits, bind_all
from sipfleet.transport.tcp import TcpTransport
from sipfleet.transport.tls import TlsCertificates, TlsFileError, write_self_signed
from tests.transport.helpers import TIMEOUT, options
from tests.transport.sinks import RecordingSink


def self_signed(directory: Path, name: str = "lb") -> tuple[Path, Path]:
    certificate, key = directory / f"{name}.crt", directory / f"{name}.key"
    write_self_signed(certificate, key, ["127.0.0.1"])
    return certificate, key


def trusting_nothing() -> ssl.SSLContext:
    """A client that takes any certificate (the tests read it, they do not trust it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[tuple[TcpTransport, RecordingSink, TlsCertificates]]:
    certificates = TlsCertificates(*self_signed(tmp_path))
    sink = RecordingSink()
    transport = TcpTransport(sink, TransportLimits(read_timeout_s=5))
    await transport.start([], bind_all([parse_listen("tls:127.0.0.1:0")]), certificates)
    yield transport, sink, certificates
    await transport.close()


async def open_tls(
    transport: TcpTransport, **options: object
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A connection and the serial number of the certificate the server showed."""
    reader, writer = await asyncio.open_connection(
        *transport.addresses[0], ssl=trusting_nothing(), **options
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return reader, writer, x509.load_der_x509_certificate(der).serial_number


async def test_a_message_over_tls_arrives_from_a_tls_peer(tls) -> None:
    transport, sink, _ = tls
    reader, writer, _ = await open_tls(transport)
    message = options("127.0.0.1:5999")
    writer.write(message + b"\r\n\r\n")  # a message, then an RFC 5626 ping
    data, peer = await sink.frame()
    assert data == message
    assert peer.transport == "tls"
    assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\r\n"  # the pong
    answer = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    transport.send(answer, peer.reply_to)
    assert await asyncio.wait_for(reader.readexactly(len(answer)), TIMEOUT) == answer
    assert transport.counters()["tls_accepted"] == 1
    writer.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_tls_1_1_is_refused(tls) -> None:
    transport, _, _ = tls
    old = trusting_nothing()
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection(*transport.addresses[0], ssl=old)


async def test_tls_connections_are_never_opened(tls) -> None:
    transport, _, _ = tls
    with pytest.raises(TransportError, match="TLS connections are accepted, never opened"):
        transport.send(b"x", Destination("tls", "127.0.0.1", 5061))


async def test_a_reload_serves_new_connections_and_keeps_old_ones(tls, tmp_path) -> None:
    transport, sink, certificates = tls
    _old_reader, old_writer, old_serial = await open_tls(transport)
    assert old_serial == certificates.current.serial
    new_certificate, new_key = self_signed(tmp_path, "renewed")
    os.replace(new_certificate, certificates.certificate_path)
    os.replace(new_key, certificates.key_path)
    assert certificates.changed_on_disk()
    loaded = certificates.reload("test")
    assert loaded.serial != old_serial
    assert not certificates.changed_on_disk()
    _, new_writer, new_serial = await open_tls(transport)
    assert new_serial == loaded.serial
    old_writer.write(options("127.0.0.1:5999"))  # the old connection still carries SIP
    _, peer = await sink.frame()
    assert peer.transport == "tls"
    for writer in (old_writer, new_writer):
        writer.close()


async def test_a_reload_with_a_bad_key_keeps_the_old_certificate(tls, tmp_path) -> None:
    transport, _, certificates = tls
    before = certificates.current.serial
    _, other_key = self_signed(tmp_path, "other")
    os.replace(other_key, certificates.key_path)  # the key of another certificate
    with pytest.raises(TlsFileError, match=r"^lb.tls_key: .* does not go with lb.tls_certificate"):
        certificates.reload("test")
    assert certificates.reload_failures == 1
    _, writer, serial = await open_tls(transport)
    assert serial == before
    writer.close()


async def test_the_file_watch_reloads_a_changed_certificate(tls, tmp_path) -> None:
    transport, _, certificates = tls
    before = certificates.current.serial
    watching = asyncio.ensure_future(certificates.watch(interval=0.05))
    try:
        renewed = self_signed(tmp_path, "renewed")
        os.replace(renewed[1], certificates.key_path)
        os.replace(renewed[0], certificates.certificate_path)
        async with asyncio.timeout(TIMEOUT):
            while certificates.current.serial == before:
                await asyncio.sleep(0.02)
    finally:
        watching.cancel()
    _, writer, serial = await open_tls(transport)
    assert serial == certificates.current.serial
    writer.close()


def test_errors_name_the_setting(tmp_path: Path) -> None:
    certificate, key = self_signed(tmp_path)
    with pytest.raises(TlsFileError, match=r"^lb.tls_certificate: cannot read .*missing"):
        TlsCertificates(tmp_path / "missing.crt", key)
    with pytest.raises(TlsFileError, match=r"^lb.tls_key: cannot read"):
        TlsCertificates(certificate, tmp_path / "missing.key")
    (tmp_path / "junk").write_text("not a certificate")
    with pytest.raises(TlsFileError, match=r"^lb.tls_certificate: .* holds no PEM certificate"):
        TlsCertificates(tmp_path / "junk", key)
    with pytest.raises(TlsFileError, match=r"^lb.tls_key: .* holds no usable PEM private key"):
        TlsCertificates(certificate, certificate)


def test_a_self_signed_key_is_private(tmp_path: Path) -> None:
    certificate, key = self_signed(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    names = x509.load_pem_x509_certificate(certificate.read_bytes()).extensions
    san = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
