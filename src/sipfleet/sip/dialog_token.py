"""Dialog tokens: a cluster's Record-Route entries belong to the dialog they were made for.

A proxy that Record-Routes a dialog-creating request puts ``;dt=<token>`` in its URI; the
token is a MAC, with the cluster secret, over the Call-ID and the caller's tag (the From
tag of that request). Every later request of the dialog carries it back in its Route: the
caller's with that tag in From, the callee's in To. A Route naming the proxy without a
token that verifies for the request's own Call-ID and tags was not made by the cluster for
this dialog (guessed from a Record-Route seen elsewhere, or written by hand): the proxy
treats the request as a new one, never as part of a dialog it is in. Any proxy holding the
cluster secret verifies the token, so a dialog outlives the proxy that made it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from sipfleet.sip.memo import Memo
from sipfleet.sip.message import Request
from sipfleet.sip.uri import SipUri

PARAM = "dt"
_MAC_BYTES = 9  # 72 bits, 12 base64 characters; each guess costs the attacker a request
MAX_VERIFIED = 4096  # dialogs whose token was verified, remembered (see caller_tag)


@dataclass(frozen=True, slots=True)
class Dialog:
    """What a Record-Route token is bound to: the Call-ID and the caller's tag."""

    call_id: str
    tag: str

    def material(self) -> bytes:
        return _material(self.call_id, self.tag)

    @classmethod
    def created_by(cls, request: Request) -> Dialog:
        """The dialog a dialog-creating request (no To tag yet) would make."""
        return cls(request.call_id, request.from_.tag or "")


_blake2b: Final = hashlib.blake2b  # a C static in the compiled build, not a globals lookup


def _material(call_id: str, tag: str) -> bytes:
    return f"\x00{call_id}\x00{tag}".encode("latin-1", "replace")


def _urlsafe_base64(data: bytes) -> str:
    """``base64.urlsafe_b64encode(data).decode()`` from its C parts: that function is
    interpreted Python, and every Record-Route the proxy stamps takes one."""
    text = binascii.b2a_base64(data, newline=False).decode("ascii")
    return text.replace("+", "-").replace("/", "_")


class DialogTokens:
    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        self._key = hashlib.sha256(b"sipfleet dialog token\x00" + secret).digest()
        # token, Call-ID, From tag, To tag -> the caller's tag: only what verified is kept
        self._verified: Final = Memo[tuple[str, str, str | None, str | None], str](MAX_VERIFIED)

    def token(self, dialog: Dialog) -> str:
        """The MAC is keyed BLAKE2b (RFC 7693), a third of HMAC-SHA256's cost here."""
        return self._token(dialog.call_id, dialog.tag)

    def _token(self, call_id: str, tag: str) -> str:
        """``token`` without a ``Dialog``: a frozen dataclass costs more to make, compiled,
        than the MAC (its ``__init__`` is interpreted)."""
        mac = _blake2b(_material(call_id, tag), key=self._key, digest_size=_MAC_BYTES).digest()
        return _urlsafe_base64(mac)

    def _hmac_token(self, dialog: Dialog) -> str:
        """The token of a release before the BLAKE2b one: dialogs set up before an upgrade
        carry it in their Route sets for as long as they last."""
        mac = hmac.digest(self._key, dialog.material(), "sha256")[:_MAC_BYTES]
        return base64.urlsafe_b64encode(mac).decode("ascii")

    def stamp(self, record_route: str, request: Request) -> str:
        """``<sip:host:port;lr>`` with this dialog's token as a URI parameter."""
        param = f";{PARAM}={self._token(request.call_id, request.from_.tag or '')}"  # created_by
        return (
            record_route[:-1] + param + ">" if record_route.endswith(">") else record_route + param
        )

    def verify(self, our_route: SipUri, request: Request) -> bool:
        """The Route of ours ``request`` came by was made for its dialog."""
        return self.caller_tag(our_route, request) is not None

    def caller_tag(self, our_route: SipUri, request: Request) -> str | None:
        """The tag of the dialog's caller (From in the caller's requests, To in the
        callee's) when the Route of ours was made for this dialog; else None."""
        value = our_route.params.get(PARAM)
        if not value:
            return None
        return self.dialog_caller(value, request.call_id, request.from_.tag, request.to.tag)

    def dialog_caller(
        self, value: str, call_id: str, from_tag: str | None, to_tag: str | None
    ) -> str | None:
        """``caller_tag`` for a token ``value`` (not empty) and the request's Call-ID and
        tags as read already (the proxy's fast ACK reads them from the lines)."""
        # A dialog's requests (ACK, BYE, re-INVITE) carry the same token and tags, and the
        # proxy asks more than once per request: a MAC computed once per dialog. Kept only
        # after it verified, keyed by everything it was computed from, so a forged token is
        # checked from scratch every time and cannot change what another request reads.
        key = (value, call_id, from_tag, to_tag)
        known = self._verified.table.get(key)
        if known is not None:
            return known
        for tag in (from_tag, to_tag):  # this release's token, then the previous one's
            if tag and hmac.compare_digest(value, self._token(call_id, tag)):
                return self._verified.put(key, tag)
        for tag in (from_tag, to_tag):
            if tag and hmac.compare_digest(value, self._hmac_token(Dialog(call_id, tag))):
                return self._verified.put(key, tag)
        return None
