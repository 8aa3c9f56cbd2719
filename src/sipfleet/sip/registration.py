"""What a REGISTER asks for, per RFC 3261 §10.3, RFC 3327 (Path) and RFC 5626 (outbound).

Pure functions: the registrar role feeds a validated request in and gets back either the
binding changes to store or a ``Rejection`` to answer with. Authentication and storage
happen in between, in the role.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Protocol

from sipfleet.sip.address import Address
from sipfleet.sip.errors import ParseError
from sipfleet.sip.grammar import unescape, unquote
from sipfleet.sip.message import Request
from sipfleet.sip.uri import SipUri

SUPPORTED_EXTENSIONS = frozenset({"path", "outbound", "gruu"})
MAX_CONTACT_LENGTH = 512
MAX_PATH_LENGTH = 2048
MAX_INSTANCE_LENGTH = 255
MAX_USER_AGENT_LENGTH = 255
MAX_CALL_ID_LENGTH = 255
MAX_CONTACTS_PER_REQUEST = 32
_Q_VALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    domains: frozenset[str] = frozenset()  # empty: every domain is served
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200


class Rejection(Exception):
    """The REGISTER fails with this status; ``headers`` go into the answer."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or []


@dataclass(frozen=True, slots=True)
class AddressOfRecord:
    username: str
    domain: str

    def __str__(self) -> str:
        return f"{self.username}@{self.domain}"


@dataclass(frozen=True, slots=True)
class ContactChange:
    """One Contact of the REGISTER: add/refresh (expires > 0) or remove (expires == 0)."""

    contact: str  # the URI as the UA wrote it: the binding's key with the AOR
    expires: int  # seconds from now, already clamped to the registrar's maximum
    q: float | None = None
    instance: str | None = None  # +sip.instance, quotes and <> removed
    reg_id: int | None = None
    methods: str | None = None


@dataclass(frozen=True, slots=True)
class RegistrationPlan:
    aor: AddressOfRecord
    call_id: str
    cseq: int
    wildcard: bool = False  # Contact: * with Expires: 0
    changes: list[ContactChange] = field(default_factory=list)
    path: str | None = None  # the Path header values to store, comma-joined
    echo_path: bool = False  # the UA supports path: list the Path in the 200
    outbound: bool = False  # RFC 5626 flows registered: "Require: outbound" in the 200
    user_agent: str | None = None

    @property
    def is_query(self) -> bool:
        return not self.wildcard and not self.changes


def address_of_record(request: Request, settings: RegistrarSettings) -> AddressOfRecord:
    """Steps 1 and 5: the domain must be ours and the To a sip/sips AOR."""
    try:
        uri = request.to.uri
    except ParseError as exc:
        raise Rejection(400, f"Bad To header: {exc.reason}") from None
    if not isinstance(uri, SipUri):
        raise Rejection(400, "To must be a sip or sips URI (an address-of-record)")
    if uri.user is None:
        raise Rejection(400, "To URI has no user part")
    domain = uri.host_bare
    if settings.domains and domain not in settings.domains:
        raise Rejection(404, f"Domain {domain} is not served here")
    request_uri = request.uri
    served = settings.domains
    if served and isinstance(request_uri, SipUri) and request_uri.host_bare not in served:
        raise Rejection(404, f"Domain {request_uri.host_bare} is not served here")
    return AddressOfRecord(unescape(uri.user), domain)


def unsupported_extensions(request: Request) -> list[str]:
    """Step 2: option tags in Require that this registrar does not understand."""
    return [tag for tag in request.require if tag not in SUPPORTED_EXTENSIONS]


def plan_registration(
    request: Request, aor: AddressOfRecord, settings: RegistrarSettings, path_trusted: bool
) -> RegistrationPlan:
    """Steps 6 and 7, up to the store: what changes, and whether it is allowed.

    ``path_trusted``: the request came from one of our LBs, whose Path is stored even when
    the UA does not support path (then the 200 does not echo it, like Kamailio's lazy mode).
    """
    call_id = request.call_id
    if len(call_id) > MAX_CALL_ID_LENGTH:
        raise Rejection(400, "Call-ID too long")
    path, echo_path = _path(request, path_trusted)
    user_agent = request.header("user-agent")
    wildcard = request.contact_is_star
    changes: list[ContactChange] = []
    if wildcard:
        if len(request.header_values("contact")) != 1 or request.expires != 0:
            raise Rejection(400, "Contact: * is allowed only alone and with Expires: 0")
    else:
        changes = [_change(contact, request, settings) for contact in _contacts(request)]
        _check_min_expires(changes, settings)
    return RegistrationPlan(
        aor=aor,
        call_id=call_id,
        cseq=request.cseq.seq,
        wildcard=wildcard,
        changes=changes,
        path=path,
        echo_path=echo_path,
        outbound=any(change.reg_id is not None for change in changes),
        user_agent=user_agent[:MAX_USER_AGENT_LENGTH] if user_agent else None,
    )


def _contacts(request: Request) -> list[Address]:
    try:
        contacts = request.contacts
        for contact in contacts:
            contact.uri  # noqa: B018 - parses the URI now, so a bad one is a 400 here
    except ParseError as exc:
        raise Rejection(400, exc.reason) from None
    if len(contacts) > MAX_CONTACTS_PER_REQUEST:
        raise Rejection(400, f"More than {MAX_CONTACTS_PER_REQUEST} Contacts in one REGISTER")
    return contacts


def _path(request: Request, trusted: bool) -> tuple[str | None, bool]:
    values = request.header_values("path")
    if not values:
        return None, False
    supported = "path" in request.supported
    if not supported and not trusted:
        raise Rejection(420, "Path requires Supported: path", [("Unsupported", "path")])
    path = ", ".join(values)
    if len(path) > MAX_PATH_LENGTH:
        raise Rejection(400, "Path too long")
    return path, supported


def _change(contact: Address, request: Request, settings: RegistrarSettings) -> ContactChange:
    uri_text = contact.uri_text
    if len(uri_text) > MAX_CONTACT_LENGTH:
        raise Rejection(400, "Contact URI too long")
    params = contact.params
    return ContactChange(
        contact=uri_text,
        expires=_expires(params, request, settings),
        q=_q(params.get("q")),
        instance=_instance(params.get("+sip.instance")),
        reg_id=_reg_id(params.get("reg-id"), params.get("+sip.instance")),
        methods=unquote(params.get("methods") or "") or None,
    )


def _expires(params: dict[str, str | None], request: Request, settings: RegistrarSettings) -> int:
    """Contact expires, else the Expires header, else the default; clamped to the max."""
    if "expires" in params:
        param = params["expires"] or ""
        if not (param.isdigit() and param.isascii()) or len(param) > 10 or int(param) > 2**32 - 1:
            raise Rejection(400, "Bad expires parameter in Contact")
        value = int(param)
    elif request.expires is not None:
        value = request.expires
    else:
        value = settings.default_expires
    return min(value, settings.max_expires)


def _check_min_expires(changes: list[ContactChange], settings: RegistrarSettings) -> None:
    if any(0 < change.expires < settings.min_expires for change in changes):
        raise Rejection(423, "Interval Too Brief", [("Min-Expires", str(settings.min_expires))])


def _q(value: str | None) -> float | None:
    if value is None:
        return None
    if _Q_VALUE.fullmatch(value) is None:
        raise Rejection(400, "Bad q parameter in Contact (0 to 1, three decimals)")
    return float(value)


def _instance(value: str | None) -> str | None:
    if value is None:
        return None
    text = unquote(value)
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text or len(text) > MAX_INSTANCE_LENGTH:
        raise Rejection(400, "Bad +sip.instance parameter in Contact")
    return text


def _reg_id(value: str | None, instance: str | None) -> int | None:
    if value is None:
        return None
    if instance is None:
        raise Rejection(400, "reg-id without +sip.instance in Contact")
    if not (value.isdigit() and value.isascii()) or len(value) > 9 or int(value) == 0:
        raise Rejection(400, "Bad reg-id parameter in Contact")
    return int(value)


class BindingView(Protocol):
    """What the 200 OK needs of a stored binding."""

    @property
    def contact(self) -> str: ...
    @property
    def expires(self) -> int: ...  # absolute, unix seconds
    @property
    def q(self) -> float | None: ...
    @property
    def instance(self) -> str | None: ...
    @property
    def reg_id(self) -> int | None: ...


def contact_value(binding: BindingView, now: float) -> str:
    """A Contact element of the 200 OK: the binding with its remaining lifetime."""
    remaining = max(0, binding.expires - int(now))
    value = f"<{binding.contact}>;expires={remaining}"
    if binding.q is not None:
        value += f";q={binding.q:.3g}"
    if binding.instance is not None:
        value += f';+sip.instance="<{binding.instance}>"'
    if binding.reg_id is not None:
        value += f";reg-id={binding.reg_id}"
    return value


def registered_headers(
    plan: RegistrationPlan, bindings: list[BindingView], now: float
) -> list[tuple[str, str]]:
    """The headers of the 200 OK (§10.3 step 8): every current binding, and a Date."""
    headers = [("Contact", contact_value(binding, now)) for binding in bindings]
    if plan.echo_path and plan.path:
        headers.append(("Path", plan.path))
    if plan.outbound:
        headers.append(("Require", "outbound"))
    headers.append(("Date", _date(int(now))))
    return headers


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The Date header's text: formatted once per second, not once per REGISTER."""
    return formatdate(second, usegmt=True)
