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

from sipfleet.sip.address import parse_address
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import Message, Request
from sipfleet.sip.uri import SipUri, parse_uri

ANONYMOUS_URI = "sip:anonymous@anonymous.invalid"
ANONYMOUS_USER = "anonymous"
ANONYMOUS_FROM = f'"Anonymous" <{ANONYMOUS_URI}>'
IDENTITY_HEADERS = ("p-asserted-identity", "p-preferred-identity", "remote-party-id")
ROUTE_PARAM = "pv"
_NONCE_BYTES = 12
_MAX_SEALED = 2048
PRIVACY_VALUES = frozenset({"id", "header", "user"})


class Direction(Enum):
    TO_CALLEE = "to-callee"  # from the caller who asked for privacy: hide its identity
    TO_CALLER = "to-caller"  # from the callee: restore the caller's identity in To


@dataclass(frozen=True, slots=True)
class HiddenIdentity:
    """What the callee must not see, and the caller must get back."""

    from_value: str  # the caller's From header value as it sent it, tag included
    from_tag: str
    asserted: tuple[str, ...] = ()  # P-Asserted-Identity values, for trusted peers
    contact_user: str | None = None  # the caller's Contact user, when the callee gets "anonymous"
    # The URI of the hop toward the caller (the Record-Route below ours, else the caller's
    # Contact): the caller's identity is written only into requests that go there.
    caller_hop: str | None = None

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
        fields = [
            identity.from_value,
            identity.from_tag,
            list(identity.asserted),
            identity.contact_user,
            identity.caller_hop,
        ]
        plain = json.dumps(fields, separators=(",", ":")).encode("utf-8", "surrogateescape")
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
            fields = json.loads(plain.decode("utf-8", "surrogateescape"))
        except (ValueError, InvalidTag, TypeError):
            return None
        return _identity_from(fields)


def _identity_from(fields: object) -> HiddenIdentity | None:
    """The sealed fields (an authentic value, so only a format mismatch fails here)."""
    if not isinstance(fields, list) or not 3 <= len(fields) <= 5:
        return None
    from_value, from_tag, asserted, *rest = fields
    contact_user, caller_hop = [*rest, None, None][:2]
    if not isinstance(from_value, str) or not isinstance(from_tag, str):
        return None
    if not isinstance(asserted, list) or not all(isinstance(a, str) for a in asserted):
        return None
    if not all(value is None or isinstance(value, str) for value in (contact_user, caller_hop)):
        return None
    return HiddenIdentity(from_value, from_tag, tuple(asserted), contact_user, caller_hop)


def privacy_header(request: Request) -> bool | None:
    """What the Privacy header asks: True for id, header or user (RFC 3325 / RFC 3323),
    False for 'none' (no privacy for this request, whatever the user's preference),
    None when it says neither (absent, or only levels the proxy does not provide)."""
    if "privacy" not in request.keys:
        return None
    values: set[str] = set()
    for line in request.header_lines("privacy"):
        values.update(part.strip().lower() for part in line.replace(",", ";").split(";"))
    if "none" in values:
        return False
    return True if values & PRIVACY_VALUES else None


def privacy_requested(request: Request) -> bool:
    """Privacy: id or header (RFC 3325 / RFC 3323); 'none' switches it off."""
    return privacy_header(request) is True


def identity_of(request: Request, *, hide_contact_user: bool = False) -> HiddenIdentity:
    """What must be kept to undo hiding the caller of this initial request: its From,
    asserted identities, Contact user (when it is hidden too) and the hop toward it."""
    original = request.from_
    contact = _first_contact_uri(request)
    record_routes = request.header_values("record-route")
    if record_routes:
        caller_hop: str | None = _uri_text_of(record_routes[0])
    else:
        caller_hop = str(contact) if contact is not None else None
    return HiddenIdentity(
        from_value=str(original),
        from_tag=original.tag or "",
        asserted=tuple(request.header_lines("p-asserted-identity")),
        contact_user=contact.user if hide_contact_user and contact is not None else None,
        caller_hop=caller_hop,
    )


def _first_contact_uri(message: Message) -> SipUri | None:
    try:
        contacts = message.contacts
        uri = contacts[0].uri if contacts else None
    except ParseError:
        return None
    return uri if isinstance(uri, SipUri) else None


def _uri_text_of(route: str) -> str | None:
    try:
        return parse_address(route, "Record-Route").uri_text
    except ParseError:
        return None


def hide_caller(
    request: Request, trusted_next_hop: bool, identity: HiddenIdentity | None = None
) -> HiddenIdentity:
    """Rewrite an initial request toward the callee; return what is needed to undo it
    (``identity``: already taken from this request with ``identity_of``).

    A trusted next hop (a gateway flagged as such) keeps the asserted identity with
    ``Privacy: id`` (RFC 3325 §9.3); anyone else gets no identity header at all.
    """
    original = request.from_
    if identity is None:
        identity = identity_of(request)
    request.set_from(identity.anonymous_from())
    for name in IDENTITY_HEADERS:
        request.remove_header(name)
    if trusted_next_hop:
        for value in identity.asserted or (_asserted_from(original.uri_text),):
            request.add_header("P-Asserted-Identity", value)
        request.set_header("Privacy", "id")
    if identity.contact_user is not None:
        hide_contact_user(request)
    return identity


def hide_contact_user(message: Message) -> None:
    """Every sip/sips Contact's user part becomes "anonymous" (the Contact's host still
    tells where the caller's device is: hiding that takes a B2BUA, RFC 3323 §5.1)."""
    try:
        contacts = message.contacts
    except ParseError:
        return
    changed = False
    values = []
    for contact in contacts:
        try:
            uri = contact.uri
        except ParseError:
            uri = None
        if isinstance(uri, SipUri) and uri.user is not None and uri.user != ANONYMOUS_USER:
            contact = contact.replace(uri=uri.replace(user=ANONYMOUS_USER, password=None))
            changed = True
        values.append(str(contact))
    if changed:
        message.set_header("contact", ", ".join(values))


def restore_request_uri(request: Request, identity: HiddenIdentity) -> None:
    """A request from the callee to the caller's hidden Contact: give the user part back."""
    uri = request.uri
    if identity.contact_user is not None and isinstance(uri, SipUri) and uri.user == ANONYMOUS_USER:
        request.uri = uri.replace(user=identity.contact_user)


def continues_toward_caller(request: Request, identity: HiddenIdentity) -> bool:
    """Whether a request from the callee (our own Route removed) goes on to the caller:
    its next hop (top Route, else Request-URI) is the hop the caller was reached by.

    Only then may the caller's identity be written into it: a callee that drops the
    rest of the route set and points the Request-URI at itself learns nothing."""
    if identity.caller_hop is None:
        return False
    try:
        top = request.top_route
        next_hop = top.uri if top is not None else request.uri
        expected = parse_uri(identity.caller_hop)
    except ParseError:
        return False
    if not isinstance(next_hop, SipUri) or not isinstance(expected, SipUri):
        return False
    if top is None and identity.contact_user is not None and next_hop.user == ANONYMOUS_USER:
        next_hop = next_hop.replace(user=identity.contact_user)  # the hidden Contact
    return next_hop == expected


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
    """Caller -> callee: hide the From (and the Contact user) again. Callee -> caller:
    give the caller its To (and its Contact user in the Request-URI)."""
    if direction is Direction.TO_CALLEE:
        request.set_from(identity.anonymous_from())
        for name in IDENTITY_HEADERS:
            request.remove_header(name)
        if identity.contact_user is not None:
            hide_contact_user(request)
    else:
        request.set_to(identity.from_value)
        restore_request_uri(request, identity)


def rewrite_response(message: Message, identity: HiddenIdentity, request_went: Direction) -> None:
    """A response travels back the other way: fix the header its request had rewritten.

    The response to a request that went to the callee goes to the caller: restore From.
    The response to a request that went to the caller goes to the callee: hide To again.
    """
    if request_went is Direction.TO_CALLEE:
        message.set_from(identity.from_value)
    else:
        message.set_to(identity.anonymous_from())
        for name in IDENTITY_HEADERS:
            message.remove_header(name)
        if identity.contact_user is not None:
            hide_contact_user(message)
