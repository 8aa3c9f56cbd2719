"""Caller privacy (RFC 3323 / RFC 3325): the callee sees "Anonymous", the caller sees itself.

The proxy replaces the caller's From toward the callee and keeps what it needs to undo it
in its own Record-Route, sealed with an AEAD under a key derived from the cluster secret.
Every later request of the dialog carries that Record-Route back as a Route, so *any*
proxy of the pool can open it: restore the caller's identity in what goes to the caller,
and hide it again in what goes to the callee, for the life of the dialog.

The sealed value is bound to the Call-ID (associated data): it cannot be moved into
another dialog. A value that does not open is ignored (and the caller logs it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Message, Request

ANONYMOUS_URI = "sip:anonymous@anonymous.invalid"
ANONYMOUS_FROM = f'"Anonymous" <{ANONYMOUS_URI}>'
IDENTITY_HEADERS = ("p-asserted-identity", "p-preferred-identity", "remote-party-id")
ROUTE_PARAM = "pv"
_NONCE_BYTES = 12
_MAX_SEALED = 2048


class Direction(Enum):
    TO_CALLEE = "to-callee"  # from the caller who asked for privacy: hide its identity
    TO_CALLER = "to-caller"  # from the callee: restore the caller's identity in To


@dataclass(frozen=True, slots=True)
class HiddenIdentity:
    """What the callee must not see, and the caller must get back."""

    from_value: str  # the caller's From header value as it sent it, tag included
    from_tag: str
    asserted: tuple[str, ...] = ()  # P-Asserted-Identity values, for trusted peers

    def anonymous_from(self) -> str:
        return f"{ANONYMOUS_FROM};tag={self.from_tag}"


class PrivacySeal:
    """Seals a HiddenIdentity into a Route parameter value and opens it again."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        key = hashlib.sha256(b"sipfleet privacy\x00" + secret).digest()
        self._aead = ChaCha20Poly1305(key)

    def seal(self, identity: HiddenIdentity, call_id: str) -> str:
        plain = json.dumps(
            [identity.from_value, identity.from_tag, list(identity.asserted)],
            separators=(",", ":"),
        ).encode("utf-8", "surrogateescape")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plain, call_id.encode("latin-1", "replace"))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, value: str, call_id: str) -> HiddenIdentity | None:
        """The identity, or None when the value is not ours, was altered or moved."""
        if not value or len(value) > _MAX_SEALED or not value.isascii():
            return None
        try:
            sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
            plain = self._aead.decrypt(nonce, body, call_id.encode("latin-1", "replace"))
            from_value, from_tag, asserted = json.loads(plain.decode("utf-8", "surrogateescape"))
        except (ValueError, InvalidTag, TypeError):
            return None
        if not isinstance(from_value, str) or not isinstance(from_tag, str):
            return None
        return HiddenIdentity(from_value, from_tag, tuple(str(a) for a in asserted))


def privacy_requested(request: Request) -> bool:
    """Privacy: id or header (RFC 3325 / RFC 3323); 'none' switches it off."""
    values: set[str] = set()
    for line in request.header_lines("privacy"):
        values.update(part.strip().lower() for part in line.replace(",", ";").split(";"))
    if "none" in values:
        return False
    return bool(values & {"id", "header", "user"})


def hide_caller(request: Request, trusted_next_hop: bool) -> HiddenIdentity:
    """Rewrite an initial request toward the callee; return what is needed to undo it.

    A trusted next hop (a gateway flagged as such) keeps the asserted identity with
    ``Privacy: id`` (RFC 3325 §9.3); anyone else gets no identity header at all.
    """
    original = request.from_
    tag = original.tag or ""
    identity = HiddenIdentity(
        from_value=str(original),
        from_tag=tag,
        asserted=tuple(request.header_lines("p-asserted-identity")),
    )
    request.set_from(identity.anonymous_from())
    for name in IDENTITY_HEADERS:
        request.remove_header(name)
    if trusted_next_hop:
        for value in identity.asserted or (_asserted_from(original.uri_text),):
            request.add_header("P-Asserted-Identity", value)
        request.set_header("Privacy", "id")
    return identity


def _asserted_from(uri_text: str) -> str:
    return f"<{uri_text}>"


def direction_of(request: Request, identity: HiddenIdentity) -> Direction | None:
    """Which way an in-dialog request goes, from the tags (None: not this dialog)."""
    try:
        if request.from_.tag == identity.from_tag:
            return Direction.TO_CALLEE
        if request.to.tag == identity.from_tag:
            return Direction.TO_CALLER
    except ParseError:
        return None
    return None


def rewrite_in_dialog(request: Request, identity: HiddenIdentity, direction: Direction) -> None:
    """Caller -> callee: hide the From again. Callee -> caller: give the caller its To."""
    if direction is Direction.TO_CALLEE:
        request.set_from(identity.anonymous_from())
        for name in IDENTITY_HEADERS:
            request.remove_header(name)
    else:
        request.set_to(identity.from_value)


def rewrite_response(message: Message, identity: HiddenIdentity, request_went: Direction) -> None:
    """A response travels back the other way: fix the header its request had rewritten.

    The response to a request that went to the callee goes to the caller: restore From.
    The response to a request that went to the caller goes to the callee: hide To again.
    """
    if request_went is Direction.TO_CALLEE:
        message.set_from(identity.from_value)
    else:
        message.set_to(identity.anonymous_from())
