"""Caller privacy in the routing policy: the caller's ``clir`` preference (routing.privacy)
and the default policy's use of it."""

from __future__ import annotations

import pytest

from sipfleet.config import config_from_dict
from sipfleet.routing.api import Authenticated, CallContext, LocateUser, OffNet, Reply
from sipfleet.routing.default import DefaultPolicy
from sipfleet.routing.privacy import apply_clir, clir_on
from sipfleet.sip import Request, parse_message
from sipfleet.transport.base import Peer

PEER = Peer("udp", "198.51.100.7", 5062, "192.0.2.1", 5060)


class Services:
    """alice's preferences; counts the reads."""

    def __init__(self, clir: str | None) -> None:
        self.prefs = {"clir": clir} if clir is not None else {}
        self.reads = 0

    def is_local_domain(self, host: str) -> bool:
        return host == "example.com"

    def is_trusted_peer(self, host: str) -> bool:
        return False

    async def authenticate(self, call: CallContext) -> Authenticated | Reply:
        return Authenticated("alice", "example.com")

    async def preferences(self, username: str, domain: str) -> dict[str, str]:
        self.reads += 1
        return dict(self.prefs) if username == "alice" else {}


def context(
    services: Services,
    *,
    method: str = "INVITE",
    privacy: str | None = None,
    caller: str = "sip:alice@example.com",
    callee: str = "sip:bob@example.com",
    to_tag: str = "",
) -> CallContext:
    lines = [
        f"{method} {callee} SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1",
        f"From: <{caller}>;tag=a",
        f"To: <sip:bob@example.com>{to_tag}",
        "Call-ID: c1",
        f"CSeq: 1 {method}",
        *([f"Privacy: {privacy}"] if privacy else []),
        "Content-Length: 0",
    ]
    request = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(request, Request)
    return CallContext(request, PEER, services)


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("on", True), (" Yes ", True), ("TRUE", True), ("0", False), ("", False)],
)
def test_clir_values(value: str, on: bool) -> None:
    assert clir_on(value) is on
    assert not clir_on(None)


@pytest.mark.parametrize(
    ("clir", "privacy", "method", "hidden"),
    [
        ("1", None, "INVITE", True),
        ("1", None, "MESSAGE", True),
        ("1", None, "OPTIONS", None),  # carries no identity worth a database read
        ("0", None, "INVITE", None),
        (None, None, "INVITE", None),
        ("1", "none", "INVITE", None),  # the caller's per-call override
        ("1", "id", "INVITE", None),  # the header decides already: nothing to read
    ],
)
async def test_apply_clir(
    clir: str | None, privacy: str | None, method: str, hidden: object
) -> None:
    services = Services(clir)
    call = context(services, method=method, privacy=privacy)
    await apply_clir(call)
    assert call.hide_caller is hidden


async def test_clir_is_not_read_in_a_dialog_nor_for_foreign_callers() -> None:
    services = Services("1")
    in_dialog = context(services, to_tag=";tag=b")
    foreign = context(services, caller="sip:eve@elsewhere.example")
    await apply_clir(in_dialog)
    await apply_clir(foreign)
    assert in_dialog.hide_caller is None
    assert foreign.hide_caller is None
    assert services.reads == 0


async def test_a_policy_decision_is_not_overruled() -> None:
    services = Services("1")
    call = context(services)
    call.hide_caller = False
    await apply_clir(call)
    assert call.hide_caller is False
    assert services.reads == 0


def policy(**proxy: object) -> DefaultPolicy:
    return DefaultPolicy(
        config_from_dict({"sip": {"domains": ["example.com"]}, "proxy": {**proxy}})
    )


async def test_default_policy_hides_a_clir_caller() -> None:
    call = context(Services("yes"))
    assert await policy().route(call) == LocateUser()
    assert call.hide_caller is True


async def test_default_policy_reads_no_clir_when_switched_off() -> None:
    services = Services("yes")
    call = context(services)
    assert await policy(privacy_clir=False, authenticate=False).route(call) == LocateUser()
    assert call.hide_caller is None
    assert services.reads == 0


async def test_clir_and_lcr_share_one_read_of_the_preferences() -> None:
    services = Services("1")
    call = context(services, callee="sip:4312345@pstn.example.net")
    assert await policy().route(call) == OffNet()
    assert (await call.preferences())["clir"] == "1"  # the LCR asks again for lcr_cap
    assert services.reads == 1
