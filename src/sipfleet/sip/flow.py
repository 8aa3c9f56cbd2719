"""Flow tokens: how the LB finds a client again (RFC 5626 §5.2, RFC 3327 Path).

The LB puts a token in the user part of its Path and Record-Route URIs. It names the
client's transport address as the LB saw it (the NAT binding), the TCP connection and the
LB worker that owns it, and whether the client must be reached over that flow (behind NAT,
TCP, RFC 5626 outbound) or at its Contact. It also names the LB that made it, so that after a
restart each LB takes back only its own flows. The token is authenticated with the cluster
secret: a request that comes back with a token the LB did not make is refused (403), so
nothing in a packet can point the LB at an address of the sender's choosing.

A token in a Record-Route is also bound to its dialog: its MAC covers the Call-ID and the
caller's tag (the From tag of the dialog-creating request; in later requests the From or
the To tag, by direction). Seen in another dialog it does not verify, so a token copied
out of one call cannot steer a request of another. A Path token (REGISTER) is not bound:
it serves every call to that binding.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final, Literal

from sipfleet.sip.dialog_token import Dialog
from sipfleet.sip.memo import Memo

# Version 3: the MAC is keyed BLAKE2b (RFC 7693), a third of HMAC-SHA256's cost through
# Python's OpenSSL binding. Version 2 (HMAC-SHA256) is still accepted: the Paths stored
# with registrations and the Record-Routes of dialogs made before an upgrade hold them.
_VERSION = 3
_HMAC_VERSION = 2
_MAC_BYTES = 10  # 80 bits: forging one takes 2**79 tries on average, each a SIP request
_HEADER = struct.Struct("!BBBHIH")  # version, flags, worker, port, connection, lb
_FLAG_TCP = 0x01
_FLAG_REACH_BY_FLOW = 0x02
_FLAG_IPV6 = 0x04
_FLAG_DIALOG = 0x08  # the MAC covers a dialog (Call-ID and the caller's tag)
_FLAG_TLS = 0x10  # with _FLAG_TCP: the connection is TLS (RFC 3261 §26)
_FLAG_WS = 0x20  # with _FLAG_TCP: WebSocket (RFC 7118), with _FLAG_TLS too: WSS
FlowTransport = Literal["udp", "tcp", "tls", "ws", "wss"]
# Verified tokens, by token, Call-ID and tags: a dialog's ACK and BYE carry the same ones.
# Bounded twice: in entries (sip/memo.py) and in each key's size (a Call-ID may be long).
MAX_DECODED = 4096
MAX_DECODED_TEXT = 256  # characters of Call-ID and tags together
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class Flow:
    transport: FlowTransport
    host: str  # the client's address as the LB saw it (no IPv6 brackets)
    port: int
    connection: int = 0  # TCP/TLS/WS(S) connection id inside the owning LB worker (0 for UDP)
    worker: int = 0  # index of the LB worker process that owns the connection
    reach_by_flow: bool = True  # send to this address / connection, not to the Contact
    lb: int = 0  # which LB made the token (lb.id, 0..65535): the one that keeps it alive


class FlowTokens:
    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        self._key = hashlib.sha256(b"sipfleet flow token\x00" + secret).digest()
        self._decoded: Final = Memo[tuple[str, str, tuple[str | None, ...]], Flow](MAX_DECODED)
        # Dialog tokens made here, by token, Call-ID and caller's tag: the dialog's first
        # request back (the ACK) finds its flow without a MAC (see encode).
        self._minted: Final = Memo[tuple[str, str, str], Flow](MAX_DECODED)
        # Tokens bound to no dialog, by flow (a REGISTER's Path: a phone's flow is the
        # same at each refresh, and its token depends on nothing else)
        self._unbound: Final = Memo[Flow, str](MAX_DECODED)

    def encode(self, flow: Flow, dialog: Dialog | None = None) -> str:
        """The token for ``flow``; bound to ``dialog`` when given (a Record-Route's)."""
        if dialog is None:
            known = self._unbound.table.get(flow)
            if known is None:
                known = self._unbound.put(flow, self._encoded(flow, None))
            return known
        return self._encoded(flow, dialog)

    def _encoded(self, flow: Flow, dialog: Dialog | None) -> str:
        packed = _packed(flow.host)
        flags = (
            (_FLAG_TCP if flow.transport != "udp" else 0)
            | (_FLAG_TLS if flow.transport == "tls" or flow.transport == "wss" else 0)
            | (_FLAG_WS if flow.transport == "ws" or flow.transport == "wss" else 0)
            | (_FLAG_REACH_BY_FLOW if flow.reach_by_flow else 0)
            | (_FLAG_IPV6 if len(packed) == 16 else 0)
            | (_FLAG_DIALOG if dialog is not None else 0)
        )
        body = (
            _HEADER.pack(_VERSION, flags, flow.worker, flow.port, flow.connection, flow.lb) + packed
        )
        bound = b"" if dialog is None else dialog.material()
        token = _b64(body + self._mac(body + bound))
        if dialog is not None and dialog.tag and _short(dialog.call_id, (dialog.tag,)):
            self._remember(token, flow, dialog, packed)
        return token

    def _remember(self, token: str, flow: Flow, dialog: Dialog, packed: bytes) -> None:
        """A dialog token just made verifies, with this Call-ID and one of its tags the
        caller's, by construction: ``decode`` answers it from here, when the flow is
        what decoding gives back (an IPv4 address as inet_ntoa writes it)."""
        if len(packed) == 4 and socket.inet_ntoa(packed) == flow.host:
            self._minted.put((token, dialog.call_id, dialog.tag), flow)

    def decode(
        self, token: str, call_id: str = "", tags: tuple[str | None, ...] = ()
    ) -> Flow | None:
        """The flow a token names, or None when it is not one of ours, was altered, or is
        bound to a dialog other than ``call_id`` with one of ``tags``.

        A token that verified is remembered with the exact Call-ID and tags it verified
        for (the answer depends on nothing else): the same three again get the same flow
        without a MAC. A token refused is checked again each time."""
        key = (token, call_id, tags)
        known = self._decoded.table.get(key)
        if known is not None:
            return known
        flow = self._made_here(token, call_id, tags)
        if flow is None:
            flow = self._verified(token, call_id, tags)
        if flow is not None and _short(call_id, tags):
            self._decoded.put(key, flow)
        return flow

    def _made_here(self, token: str, call_id: str, tags: tuple[str | None, ...]) -> Flow | None:
        """The flow of a dialog token this instance made for ``call_id`` and one of
        ``tags`` (``_signed`` would verify it with that tag); None: not known."""
        minted = self._minted.table
        if not minted:
            return None
        for tag in tags:
            if tag:
                flow = minted.get((token, call_id, tag))
                if flow is not None:
                    return flow
        return None

    def _verified(self, token: str, call_id: str, tags: tuple[str | None, ...]) -> Flow | None:
        raw = _unb64(token)
        if raw is None or len(raw) < _HEADER.size + 4 + _MAC_BYTES:
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        version = body[0]
        if version != _VERSION and version != _HMAC_VERSION:
            return None
        if not self._signed(body, mac, version, call_id, tags):
            return None
        version, flags, worker, port, connection, lb = _HEADER.unpack_from(body)
        packed = body[_HEADER.size :]
        expected = 16 if flags & _FLAG_IPV6 else 4
        if len(packed) != expected:
            return None
        transport: FlowTransport = "udp"
        if flags & _FLAG_TCP:
            if flags & _FLAG_WS:
                transport = "wss" if flags & _FLAG_TLS else "ws"
            else:
                transport = "tls" if flags & _FLAG_TLS else "tcp"
        # IPv4 written here (socket.inet_ntoa: the text ipaddress gives, at a fraction of
        # its cost); IPv6 by ipaddress, whose text the rest of the LB compares with
        host = socket.inet_ntoa(packed) if expected == 4 else str(ipaddress.ip_address(packed))
        return Flow(
            transport=transport,
            host=host,
            port=port,
            connection=connection,
            worker=worker,
            reach_by_flow=bool(flags & _FLAG_REACH_BY_FLOW),
            lb=lb,
        )

    def _signed(
        self, body: bytes, mac: bytes, version: int, call_id: str, tags: tuple[str | None, ...]
    ) -> bool:
        """Whether ``mac`` is ours over ``body`` (and, for a dialog's token, over the
        dialog with one of ``tags``). The tags are tried one by one, stopping at the
        first that verifies: the caller's requests name it first."""
        if not body[1] & _FLAG_DIALOG:
            return self._verifies(mac, body, version)
        for tag in tags:
            if tag and self._verifies(mac, body + Dialog(call_id, tag).material(), version):
                return True
        return False

    def _mac(self, body: bytes) -> bytes:
        return hashlib.blake2b(body, key=self._key, digest_size=_MAC_BYTES).digest()

    def _verifies(self, mac: bytes, signed: bytes, version: int) -> bool:
        if version == _HMAC_VERSION:  # minted by a release before version 3
            expected = hmac.digest(self._key, signed, "sha256")[:_MAC_BYTES]
        else:
            expected = self._mac(signed)
        return hmac.compare_digest(mac, expected)


def _short(call_id: str, tags: tuple[str | None, ...]) -> bool:
    """Whether a memo key with these is small enough to keep (see MAX_DECODED_TEXT)."""
    size = len(call_id)
    for tag in tags:
        if tag:
            size += len(tag)
    return size <= MAX_DECODED_TEXT


def _packed(host: str) -> bytes:
    """The address's bytes: 4 for IPv4, 16 for IPv6 (ValueError for anything else, as
    ``ipaddress.ip_address`` raises)."""
    if ":" not in host:
        try:
            return socket.inet_pton(socket.AF_INET, host)
        except OSError:
            raise ValueError(f"{host!r} is not an IP address") from None
    return ipaddress.IPv6Address(host).packed


def _b64(data: bytes) -> str:
    # base64url without padding: letters, digits, '-' and '_' are all unreserved in a SIP
    # user part. binascii directly: base64.urlsafe_b64encode is interpreted Python around it.
    standard = binascii.b2a_base64(data, newline=False).rstrip(b"=").decode("ascii")
    return standard.replace("+", "-").replace("/", "_")


def _unb64(text: str) -> bytes | None:
    """The bytes of a canonical base64url text: one spelling per token, so a token cannot
    be varied (the unused low bits of the last character must be zero)."""
    if not text or len(text) > 64 or len(text) % 4 == 1 or not _B64_ALPHABET.issuperset(text):
        return None
    standard = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    data = binascii.a2b_base64(standard)
    return data if _b64(data) == text else None
