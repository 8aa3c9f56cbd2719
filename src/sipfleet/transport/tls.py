"""The certificate of the TLS listeners (RFC 3261 §26.2), reloadable without a restart.

A listening socket is given one SSL context for its whole life, so the listeners get a
fixed *front* context whose server-name callback hands every new handshake the current
certificate's context (OpenSSL calls it for every ClientHello, with or without SNI).
Reloading builds a complete new context from the files first and swaps it in only when
that worked: new connections get the new certificate, connections already made keep
theirs, and a bad file leaves the old certificate serving.

Files are checked one by one so an error names the setting at fault (``lb.tls_certificate``,
``lb.tls_key``). TLS 1.2 is the oldest version offered; the ciphers are Python's defaults
for a server (``ssl.create_default_context``: forward secrecy, AEAD first, no RC4/3DES).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

CERTIFICATE_SETTING = "lb.tls_certificate"
KEY_SETTING = "lb.tls_key"
WATCH_INTERVAL_S = 5.0  # how often the files' modification times are compared


class TlsFileError(ValueError):
    """A certificate or key that cannot serve; the message names the setting."""


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    context: ssl.SSLContext
    serial: int
    subject: str
    not_after: str  # ISO 8601, UTC
    expires: float  # the same, Unix time


def server_context() -> ssl.SSLContext:
    """TLS 1.2 or newer with Python's server defaults; no client certificates asked."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def load_certificate(certificate: Path, key: Path) -> LoadedCertificate:
    """A server context for the PEM ``certificate`` (chain) and ``key``; TlsFileError
    naming the setting whose file is missing, unreadable, not PEM, or not a match."""
    chain = _read(certificate, CERTIFICATE_SETTING)
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError as exc:
        raise TlsFileError(
            f"{CERTIFICATE_SETTING}: {certificate} holds no PEM certificate ({exc})"
        ) from None
    key_bytes = _read(key, KEY_SETTING)
    try:
        serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        why = "encrypted (give it without a passphrase)" if "encrypted" in str(exc) else exc
        raise TlsFileError(f"{KEY_SETTING}: {key} holds no usable PEM private key: {why}") from None
    context = server_context()
    try:
        context.load_cert_chain(certificate, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(
            f"{KEY_SETTING}: {key} does not go with {CERTIFICATE_SETTING} {certificate} "
            f"({exc.strerror or exc})"
        ) from None
    return LoadedCertificate(
        context,
        leaf.serial_number,
        leaf.subject.rfc4514_string(),
        leaf.not_valid_after_utc.isoformat(),
        leaf.not_valid_after_utc.timestamp(),
    )


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


class TlsCertificates:
    """The current certificate, the listeners' front context, and reloading."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.certificate_path = certificate
        self.key_path = key
        self.current = load_certificate(certificate, key)
        self._stamp = self._files_stamp()
        self.reloads = 0
        self.reload_failures = 0
        self.front = server_context()
        # The front context's own certificate is never sent: the callback below replaces
        # the context before the certificate is chosen. It needs one to be a server.
        self.front.load_cert_chain(certificate, key)
        self.front.sni_callback = self._choose_context

    def _choose_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        connection.context = self.current.context

    def reload(self, why: str) -> LoadedCertificate:
        """Load the files again; on success new handshakes get them. TlsFileError when
        they do not serve (the old certificate stays); logged either way."""
        self._stamp = self._files_stamp()
        try:
            loaded = load_certificate(self.certificate_path, self.key_path)
        except TlsFileError as exc:
            self.reload_failures += 1
            log.error("TLS certificate not reloaded (%s), the old one serves on: %s", why, exc)
            raise
        self.current = loaded
        self.reloads += 1
        log.info(
            "TLS certificate reloaded (%s): serial %x, %s, valid until %s",
            why,
            loaded.serial,
            loaded.subject,
            loaded.not_after,
        )
        return loaded

    def reload_quietly(self, why: str) -> None:
        """``reload`` for callers that only need it logged (a signal, the file watch)."""
        with contextlib.suppress(TlsFileError):  # reload() logged why
            self.reload(why)

    def changed_on_disk(self) -> bool:
        return self._files_stamp() != self._stamp

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        """Modification time, size and inode of both files (an ACME client may replace
        them by rename, which changes the inode and perhaps nothing else)."""
        stamps = []
        for path in (self.certificate_path, self.key_path):
            try:
                stat = os.stat(path)
                stamps.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def describe(self) -> dict[str, str | int]:
        current = self.current
        return {
            "certificate": str(self.certificate_path),
            "key": str(self.key_path),
            "serial": f"{current.serial:x}",
            "subject": current.subject,
            "not_after": current.not_after,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
        }

    async def watch(self, interval: float = WATCH_INTERVAL_S) -> None:
        """Reload when either file changes (checked every ``interval``), until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self.changed_on_disk():
                self.reload_quietly("the files changed")


@contextlib.asynccontextmanager
async def reloading(certificates: TlsCertificates | None) -> AsyncIterator[None]:
    """While inside: SIGHUP reloads ``certificates``, and so does a change of their files
    (nothing to do without TLS listeners)."""
    if certificates is None:
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, certificates.reload_quietly, "SIGHUP")
    watcher = loop.create_task(certificates.watch())
    try:
        yield
    finally:
        watcher.cancel()
        loop.remove_signal_handler(signal.SIGHUP)


def write_self_signed(
    certificate: Path, key: Path, hosts: Sequence[str], *, days: int = 3650
) -> LoadedCertificate:
    """A new self-signed certificate for ``hosts`` (IP addresses or names, all in its
    subjectAltName) and its P-256 key, the key file created 0600 (it never exists with
    a wider mode, not even for a moment). For trying a cluster out, not for the internet."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "sipfleet")])
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    key_bytes = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key, key_bytes)
    certificate.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return load_certificate(certificate, key)


def certificate_names(certificate: Path) -> set[str]:
    """The hosts (IP addresses and DNS names) a PEM certificate is for; empty when there
    is no readable certificate."""
    try:
        leaf = x509.load_pem_x509_certificate(certificate.read_bytes())
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    hosts = {str(address) for address in names.get_values_for_type(x509.IPAddress)}
    return hosts | set(names.get_values_for_type(x509.DNSName))


def certificate_fingerprint(certificate: Path) -> str:
    """SHA-256 of the (first) certificate in a PEM file, as AB:CD:... (what a phone shows
    when asked to trust it)."""
    leaf = x509.load_pem_x509_certificate(certificate.read_bytes())
    return leaf.fingerprint(hashes.SHA256()).hex(":").upper()


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """An IP address goes in as an iPAddress and again as a dNSName of its text: some
    phones' TLS stacks (mbedTLS in Linphone's belle-sip) compare the host they dialled
    with dNSName entries only."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        with contextlib.suppress(ValueError):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        names.append(x509.DNSName(host))
    return names


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` as a new 0600 file beside it, then rename it into place."""
    temporary = path.with_name(f".{path.name}.new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(temporary, path)
