"""RFC 3261 §10.3 steps that need no database (sipfleet.sip.registration)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sipfleet.sip import Request, parse_message, validate_request
from sipfleet.sip.registration import (
    AddressOfRecord,
    RegistrarSettings,
    RegistrationPlan,
    Rejection,
    address_of_record,
    plan_registration,
    registered_headers,
    unsupported_extensions,
)

SETTINGS = RegistrarSettings(
    domains=frozenset({"example.com"}), default_expires=3600, min_expires=60, max_expires=7200
)
ALICE = AddressOfRecord("alice", "example.com")


def register(
    *extra: str, to: str = "<sip:alice@example.com>", ruri: str = "sip:example.com"
) -> Request:
    head = [
        f"REGISTER {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-r1;rport",
        "Max-Forwards: 70",
        f"To: {to}",
        "From: <sip:alice@example.com>;tag=a1",
        "Call-ID: reg-call-1",
        "CSeq: 7 REGISTER",
        *extra,
        "Content-Length: 0",
    ]
    request = parse_message(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    assert isinstance(request, Request)
    validate_request(request)
    return request


def plan(*extra: str, trusted: bool = False) -> RegistrationPlan:
    return plan_registration(register(*extra), ALICE, SETTINGS, path_trusted=trusted)


def rejected(*extra: str, trusted: bool = False) -> Rejection:
    with pytest.raises(Rejection) as info:
        plan(*extra, trusted=trusted)
    return info.value


# -- step 1 and 5: domain and address-of-record ------------------------------------------
def test_aor_is_user_and_lowercased_domain() -> None:
    request = register(to="<sip:%61lice@EXAMPLE.com>")
    assert address_of_record(request, SETTINGS) == ALICE


def test_foreign_domain_is_refused_with_404() -> None:
    request = register(to="<sip:alice@elsewhere.net>")
    with pytest.raises(Rejection) as info:
        address_of_record(request, SETTINGS)
    assert info.value.status == 404


def test_request_uri_of_foreign_domain_is_refused() -> None:
    request = register(ruri="sip:elsewhere.net")
    with pytest.raises(Rejection) as info:
        address_of_record(request, SETTINGS)
    assert info.value.status == 404


def test_any_domain_when_none_configured() -> None:
    request = register(to="<sip:bob@anything.test>", ruri="sip:anything.test")
    assert address_of_record(request, RegistrarSettings()) == AddressOfRecord(
        "bob", "anything.test"
    )


@pytest.mark.parametrize(
    "to", ["<tel:+15551234567>", "<http://example.com/alice>", "<sip:example.com>"]
)
def test_to_must_be_a_sip_aor(to: str) -> None:
    """RFC 4475 §3.3.4: a registrar rejects a To that is not a SIP or SIPS URI with 400."""
    request = register(to=to)
    with pytest.raises(Rejection) as info:
        address_of_record(request, SETTINGS)
    assert info.value.status == 400


# -- step 2: Require ------------------------------------------------------------------------
def test_unknown_required_extension_is_listed() -> None:
    assert unsupported_extensions(register("Require: path, foo-bar")) == ["foo-bar"]
    assert unsupported_extensions(register("Require: outbound")) == []


# -- step 6 and 7: contacts and expiry --------------------------------------------------------
def test_contact_expires_param_wins_over_expires_header() -> None:
    result = plan("Contact: <sip:alice@192.0.2.10>;expires=120", "Expires: 600")
    assert [(c.contact, c.expires) for c in result.changes] == [("sip:alice@192.0.2.10", 120)]


def test_expires_header_then_default() -> None:
    assert plan("Contact: <sip:a@h>", "Expires: 600").changes[0].expires == 600
    assert plan("Contact: <sip:a@h>").changes[0].expires == 3600


def test_expiry_above_the_maximum_is_shortened() -> None:
    assert plan("Contact: <sip:a@h>;expires=999999").changes[0].expires == 7200


def test_expiry_below_the_minimum_gets_423_with_min_expires() -> None:
    rejection = rejected("Contact: <sip:a@h>;expires=30")
    assert rejection.status == 423
    assert ("Min-Expires", "60") in rejection.headers


def test_zero_expiry_is_a_removal_not_too_brief() -> None:
    assert plan("Contact: <sip:a@h>;expires=0").changes[0].expires == 0


@pytest.mark.parametrize("value", ["-1", "abc", "99999999999", "", "1\xb2"])
def test_bad_expires_param_is_400(value: str) -> None:
    contact = f"Contact: <sip:a@h>;expires={value}" if value else "Contact: <sip:a@h>;expires"
    assert rejected(contact).status == 400


def test_absurd_expires_header_is_a_parse_error() -> None:
    with pytest.raises(Exception) as info:
        register("Contact: <sip:a@h>", "Expires: 99999999999")
    assert getattr(info.value, "status", None) == 400


def test_several_contacts_in_one_register() -> None:
    result = plan("Contact: <sip:a@h1>;q=0.5, <sip:a@h2>;q=1.0", "Contact: <sip:a@h3>")
    assert [(c.contact, c.q) for c in result.changes] == [
        ("sip:a@h1", 0.5),
        ("sip:a@h2", 1.0),
        ("sip:a@h3", None),
    ]


@pytest.mark.parametrize("q", ["1.5", "0.1234", "-1", "x"])
def test_bad_q_is_400(q: str) -> None:
    assert rejected(f"Contact: <sip:a@h>;q={q}").status == 400


def test_no_contact_is_a_query() -> None:
    assert plan().is_query


def test_wildcard_needs_expires_zero_and_no_other_contact() -> None:
    assert plan("Contact: *", "Expires: 0").wildcard
    assert rejected("Contact: *", "Expires: 10").status == 400
    assert rejected("Contact: *").status == 400
    assert rejected("Contact: *", "Contact: <sip:a@h>", "Expires: 0").status == 400


def test_malformed_contact_is_400_naming_the_defect() -> None:
    rejection = rejected("Contact: <sip:a@h;expires=5")
    assert rejection.status == 400
    assert "Contact" in rejection.reason


def test_oversized_contact_is_400() -> None:
    assert rejected(f"Contact: <sip:{'a' * 600}@h>").status == 400


def test_outbound_instance_and_reg_id() -> None:
    result = plan(
        'Contact: <sip:a@h;ob>;+sip.instance="<urn:uuid:0000-1>";reg-id=1',
        "Supported: outbound, path",
    )
    change = result.changes[0]
    assert (change.instance, change.reg_id) == ("urn:uuid:0000-1", 1)
    assert result.outbound


def test_reg_id_without_instance_is_400() -> None:
    assert rejected("Contact: <sip:a@h>;reg-id=1").status == 400


@pytest.mark.parametrize("value", ["0", "x", "1\xb2", "1234567890"])
def test_bad_reg_id_is_400(value: str) -> None:
    contact = f'Contact: <sip:a@h>;+sip.instance="<urn:x>";reg-id={value}'
    assert rejected(contact).status == 400


# -- RFC 3327 Path ----------------------------------------------------------------------------
def test_path_stored_and_echoed_when_supported() -> None:
    result = plan("Path: <sip:lb.example.com;lr>", "Supported: path", "Contact: <sip:a@h>")
    assert (result.path, result.echo_path) == ("<sip:lb.example.com;lr>", True)


def test_path_without_support_from_a_client_is_420() -> None:
    rejection = rejected("Path: <sip:lb.example.com;lr>", "Contact: <sip:a@h>")
    assert rejection.status == 420
    assert ("Unsupported", "path") in rejection.headers


def test_path_from_our_lb_is_stored_but_not_echoed_without_support() -> None:
    result = plan("Path: <sip:lb.example.com;lr>", "Contact: <sip:a@h>", trusted=True)
    assert (result.path, result.echo_path) == ("<sip:lb.example.com;lr>", False)


# -- step 8: the 200 OK -------------------------------------------------------------------------
@dataclass
class Stored:
    contact: str
    expires: int
    q: float | None = None
    instance: str | None = None
    reg_id: int | None = None


def test_200_lists_every_binding_with_remaining_expiry_and_a_date() -> None:
    result = plan("Contact: <sip:a@h>", "Supported: path", "Path: <sip:lb;lr>")
    now = 1_800_000_000.0
    bindings = [
        Stored("sip:a@h", int(now) + 100, 0.5),
        Stored("sip:a@other", int(now) + 7, None, "urn:x", 2),
    ]
    headers = registered_headers(result, bindings, now)  # type: ignore[arg-type]
    assert headers[0] == ("Contact", "<sip:a@h>;expires=100;q=0.5")
    assert headers[1] == ("Contact", '<sip:a@other>;expires=7;+sip.instance="<urn:x>";reg-id=2')
    assert ("Path", "<sip:lb;lr>") in headers
    date = dict(headers)["Date"]
    assert date.endswith("GMT")
    assert "2027" in date
