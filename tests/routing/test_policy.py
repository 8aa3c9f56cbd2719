"""The routing policy API and the default policy (sipfleet.routing.api, .default)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.config import ConfigError, config_from_dict
from sipfleet.routing.api import (
    Authenticated,
    CallContext,
    LocateUser,
    OffNet,
    Relay,
    Reply,
    RoutingPolicy,
    load_policy,
)
from sipfleet.routing.default import DefaultPolicy
from sipfleet.sip import Request, parse_message
from sipfleet.transport.base import Peer

PEER = Peer("udp", "198.51.100.7", 5062, "192.0.2.1", 5060)
CONFIG = config_from_dict({"sip": {"domains": ["example.com"]}})


class FakeServices:
    def __init__(self, outcome: Authenticated | Reply | None = None, trusted: str = "") -> None:
        self.outcome = outcome or Authenticated("alice", "example.com")
        self.trusted = trusted
        self.asked = 0

    def is_local_domain(self, host: str) -> bool:
        return host == "example.com"

    def is_trusted_peer(self, host: str) -> bool:
        return host == self.trusted

    async def authenticate(self, call: CallContext) -> Authenticated | Reply:
        self.asked += 1
        return self.outcome

    async def preferences(self, username: str, domain: str) -> dict[str, str]:
        return {"lcr_cap": "2"} if (username, domain) == ("alice", "example.com") else {}


def call(
    method: str = "INVITE",
    uri: str = "sip:bob@example.com",
    caller: str = "sip:alice@example.com",
    to_tag: str = "",
    services: FakeServices | None = None,
    routed: bool = False,
) -> CallContext:
    text = (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1\r\n"
        f"From: <{caller}>;tag=a\r\nTo: <sip:bob@example.com>{to_tag}\r\nCall-ID: c1\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    return CallContext(request, PEER, services or FakeServices(), routed_to_us=routed)


async def route(context: CallContext, **config: object) -> object:
    proxy = {"authenticate": True, "from_must_match_auth": True, **config}
    policy = DefaultPolicy(config_from_dict({"sip": {"domains": ["example.com"]}, "proxy": proxy}))
    return await policy.route(context)


async def test_local_caller_to_local_user_is_authenticated_then_located() -> None:
    services = FakeServices()
    assert await route(call(services=services)) == LocateUser()
    assert services.asked == 1


async def test_without_credentials_the_challenge_is_the_answer() -> None:
    challenge = Reply(407, "Proxy Authentication Required", (("Proxy-Authenticate", "Digest"),))
    assert await route(call(services=FakeServices(challenge))) == challenge


async def test_from_must_be_the_authenticated_user() -> None:
    services = FakeServices(Authenticated("mallory", "example.com"))
    decision = await route(call(services=services))
    assert isinstance(decision, Reply)
    assert decision.status == 403


async def test_from_check_can_be_switched_off() -> None:
    services = FakeServices(Authenticated("mallory", "example.com"))
    assert await route(call(services=services), from_must_match_auth=False) == LocateUser()


async def test_trusted_peer_skips_authentication() -> None:
    services = FakeServices(trusted="198.51.100.7")
    assert await route(call(uri="sip:4312345@pstn.example.net", services=services)) == OffNet()
    assert services.asked == 0


async def test_authentication_can_be_switched_off() -> None:
    services = FakeServices()
    assert await route(call(services=services), authenticate=False) == LocateUser()
    assert services.asked == 0


async def test_local_caller_to_elsewhere_goes_off_net() -> None:
    assert await route(call(uri="tel:+4312345")) == OffNet()


async def test_a_foreign_caller_is_refused_alike_for_every_callee() -> None:
    """It cannot authenticate: by default 403, the same whoever it calls."""
    services = FakeServices()
    for callee in ("sip:bob@example.com", "sip:nobody@example.com", "sip:x@third.org"):
        refused = await route(call(caller="sip:carol@other.org", uri=callee, services=services))
        assert isinstance(refused, Reply)
        assert refused.status == 403
    assert services.asked == 0


async def test_foreign_callers_may_reach_local_users_by_switch_without_enumeration() -> None:
    services = FakeServices()
    to_local = call(caller="sip:carol@other.org", services=services)
    assert await route(to_local, foreign_callers="deliver") == LocateUser(hide_unknown=True)
    assert services.asked == 0
    refused = await route(
        call(caller="sip:carol@other.org", uri="sip:x@third.org"), foreign_callers="deliver"
    )
    assert isinstance(refused, Reply)
    assert refused.status == 403  # still no relay between two foreign parties


async def test_a_trusted_peer_reaches_local_users_whatever_its_from() -> None:
    services = FakeServices(trusted=PEER.host)
    assert await route(call(caller="sip:carol@other.org", services=services)) == LocateUser()


async def test_in_dialog_requests_follow_our_route_and_nothing_else() -> None:
    assert await route(call("BYE", to_tag=";tag=b", routed=True)) == Relay()


async def test_a_to_tag_without_our_route_is_handled_as_a_new_request() -> None:
    """Claiming a dialog is no way past the checks: authenticated like any request, and
    refused when neither caller nor callee is ours."""
    challenge = Reply(407, "Proxy Authentication Required", (("Proxy-Authenticate", "Digest"),))
    for method in ("BYE", "INVITE", "MESSAGE"):
        stray = call(method, to_tag=";tag=b", services=FakeServices(challenge))
        assert await route(stray) == challenge
        relay = call(method, "sip:anyone@127.0.0.9:5099", "sip:ceo@bank.example", ";tag=made-up")
        refused = await route(relay)
        assert isinstance(refused, Reply)
        assert refused.status == 403


async def test_register_is_not_the_proxys_business() -> None:
    decision = await route(call("REGISTER", uri="sip:example.com"))
    assert isinstance(decision, Reply)
    assert decision.status == 403


async def test_context_helpers() -> None:
    context = call()
    assert context.caller_is_local
    assert context.callee_is_local
    assert context.caller_matches(Authenticated("alice", "example.com"))
    assert await context.preferences() == {"lcr_cap": "2"}
    assert await context.preferences("bob", "example.com") == {}
    context.add_header("X-Tag", "1")
    assert context.extra_headers == [("X-Tag", "1")]


def test_reply_must_be_final() -> None:
    with pytest.raises(ValueError, match="final status"):
        Reply(180)


@pytest.fixture
def operator_module() -> Iterator[str]:
    """An operator's own policy module, as `[proxy] policy` would name it."""
    module = types.ModuleType("my_routes")

    class VoicemailPolicy(RoutingPolicy):
        async def route(self, call: CallContext) -> Relay:
            return Relay(("sip:vm@192.0.2.9",))

    module.make_policy = lambda config: VoicemailPolicy()  # type: ignore[attr-defined]
    sys.modules["my_routes"] = module
    yield "my_routes"
    del sys.modules["my_routes"]


def test_load_policy_uses_make_policy(operator_module: str) -> None:
    policy = load_policy(operator_module, CONFIG)
    assert type(policy).__name__ == "VoicemailPolicy"
    assert not policy.handles_failure


def test_load_policy_takes_a_ready_object() -> None:
    module = types.ModuleType("ready_policy")
    module.POLICY = DefaultPolicy(CONFIG)  # type: ignore[attr-defined]
    sys.modules["ready_policy"] = module
    try:
        assert load_policy("ready_policy", CONFIG) is module.POLICY
    finally:
        del sys.modules["ready_policy"]


def test_load_policy_explains_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.policy: cannot import"):
        load_policy("no.such.module_here", CONFIG)
    with pytest.raises(ConfigError, match="make_policy"):
        load_policy("json", CONFIG)


def test_default_module_loads() -> None:
    assert isinstance(load_policy("sipfleet.routing.default", CONFIG), DefaultPolicy)


def docs_example() -> str:
    text = (Path(__file__).parents[2] / "docs" / "routing-api.md").read_text()
    section = text.split("## An operator's own module", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_operator_module_in_the_docs_works(tmp_path: Path) -> None:
    (tmp_path / "doc_routes.py").write_text(docs_example())
    sys.path.insert(0, str(tmp_path))
    try:
        policy = load_policy("doc_routes", CONFIG)
        decision = await policy.route(call(uri="sip:sos@example.com"))
        assert decision == Relay(uris=("sip:112@10.1.0.1",), headers=(("Priority", "emergency"),))
        barred = await policy.route(call(uri="sip:800123@example.com"))
        assert isinstance(barred, Reply)
        assert barred.status == 403
        assert await policy.route(call()) == LocateUser()
        assert policy.handles_failure
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("doc_routes", None)
