"""The proxy engine over real UDP sockets on 127.0.0.1, with the location table in a
temporary SQLite database; scripted UAs play caller and callees."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sipfleet.config import Config, config_from_dict
from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.engine import ProxyEngine
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.roles.proxy import build_engine
from sipfleet.routing.api import CallContext
from sipfleet.sip import Request, Response, parse_message
from sipfleet.sip.digest import compute_ha1, compute_response, parse_auth_header
from sipfleet.storage import (
    Aor,
    BindingUpdate,
    Storage,
    StorageUnavailable,
    Subscriber,
    open_storage,
)
from sipfleet.storage.dsn import Dsn, Dsns
from sipfleet.storage.migrate import upgrade
from tests.core.proxy.ua import UA, in_dialog

DOMAIN = "example.com"


def is_trying(message: object) -> bool:
    return isinstance(message, Response) and message.status == 100


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    dsn = f"sqlite:///{tmp_path / 'proxy.db'}"
    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    await storage.subscribers.add(
        Subscriber(
            "alice",
            DOMAIN,
            compute_ha1("alice", DOMAIN, "secret", "MD5"),
            compute_ha1("alice", DOMAIN, "secret", "SHA-256"),
        )
    )
    for user in ("bob", "carol"):
        await storage.subscribers.add(Subscriber(user, DOMAIN, "0" * 32, "0" * 64))
    yield storage
    await storage.close()


def make_config(**proxy: Any) -> Config:
    return config_from_dict(
        {
            "node": {"cluster_secret": "test-secret"},
            "sip": {"domains": [DOMAIN], "t1_ms": 50, "timer_c_s": 1, "auth_algorithms": ["MD5"]},
            "proxy": {"authenticate": False, **proxy},
        }
    )


class Proxy:
    def __init__(self, engine: ProxyEngine, endpoint: SipEndpoint, storage: Storage) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.storage = storage

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.endpoint.addresses[0].port)

    async def bind(self, user: str, *contacts: str, q: float | None = None) -> None:
        now = int(time.time())
        updates = [BindingUpdate(c, now + 600, f"reg-{user}", 1, q=q) for c in contacts]
        await self.storage.location.save(Aor(user, DOMAIN), updates, now=now, max_contacts=10)


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(storage: Storage) -> AsyncIterator[ProxyFactory]:
    running: list[tuple[ProxyEngine, SipEndpoint]] = []

    async def start(
        store: Storage | None = None, hooks: MessageHooks = NO_HOOKS, **proxy: Any
    ) -> Proxy:
        endpoint = SipEndpoint(
            [ListenAddress("udp", "127.0.0.1", 0), ListenAddress("tcp", "127.0.0.1", 0)]
        )
        engine = build_engine(make_config(**proxy), store or storage, endpoint, hooks=hooks)
        endpoint.handler = engine
        await endpoint.start()
        running.append((engine, endpoint))
        return Proxy(engine, endpoint, storage)

    yield start
    for engine, endpoint in running:
        await engine.close()
        await endpoint.close()


@pytest.fixture
async def uas() -> AsyncIterator[Callable[[str], Awaitable[UA]]]:
    started: list[UA] = []

    async def make(name: str) -> UA:
        ua = await UA.start(name)
        started.append(ua)
        return ua

    yield make
    for ua in started:
        ua.close()


async def invite(caller: UA, proxy: Proxy, callee: str = "bob", **kwargs: Any) -> Request:
    """Send an INVITE for ``callee`` and check the 100 Trying; returns what was sent."""
    text = caller.request("INVITE", f"sip:{callee}@{DOMAIN}", to=f"sip:{callee}@{DOMAIN}", **kwargs)
    caller.send(text, proxy.address)
    await caller.expect(100)
    sent = parse_message(text.encode("latin-1"))
    assert isinstance(sent, Request)
    return sent


def parse_request(text: str) -> Request:
    request = parse_message(text.encode("latin-1"))
    assert isinstance(request, Request)
    return request


# -- calls -----------------------------------------------------------------------------------
async def test_basic_call_with_bye_from_the_callee(start_proxy: ProxyFactory, uas: Any) -> None:
    proxy = await start_proxy()
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    sent = await invite(caller, proxy)

    incoming = await bob.expect("INVITE")
    assert isinstance(incoming, Request)
    assert incoming.uri_text == bob.contact
    assert incoming.max_forwards == 69
    (record_route,) = incoming.header_values("record-route")
    ours = f"<sip:127.0.0.1:{proxy.address[1]};lr>"
    assert record_route == proxy.engine.dialog_tokens.stamp(ours, sent)  # ;dt=<this dialog's>
    assert len(incoming.vias) == 2
    bob.send(bob.answer(incoming, 180), proxy.address)
    ok = bob.answer(incoming, 200)
    bob.send(ok, proxy.address)
    assert (await caller.expect(180)).to.tag == "bob"
    answer = await caller.expect(200)
    assert isinstance(answer, Response)
    assert len(answer.vias) == 1  # the proxy's Via is gone

    ack = in_dialog(
        caller,
        "ACK",
        answer,
        request_uri=bob.contact,
        from_=sent.from_.uri_text,
        to=sent.to.uri_text,
        from_tag="caller",
        to_tag="bob",
        cseq=1,
    )
    caller.send(ack, proxy.address)
    assert not (await bob.expect("ACK")).has("route")

    bye = in_dialog(
        bob,
        "BYE",
        answer,
        request_uri=caller.contact,
        from_=sent.to.uri_text,
        to=sent.from_.uri_text,
        from_tag="bob",
        to_tag="caller",
        cseq=1,
        reverse_routes=True,
    )
    bob.send(bye, proxy.address)
    incoming_bye = await caller.expect("BYE")
    assert isinstance(incoming_bye, Request)
    caller.send(caller.answer(incoming_bye, 200, tag="caller"), proxy.address)
    assert (await bob.expect(200)).cseq.method == "BYE"


async def test_unknown_user_is_404_and_unregistered_user_is_480(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller = await uas("alice")
    await invite(caller, proxy, "nobody")
    assert (await caller.expect(404)).to.tag
    await invite(caller, proxy, "carol")  # a subscriber, never registered
    await caller.expect(480)


async def test_parallel_fork_one_answers_the_other_is_cancelled(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller, desk, mobile = await uas("alice"), await uas("desk"), await uas("mobile")
    await proxy.bind("bob", desk.contact, mobile.contact)
    await invite(caller, proxy)
    to_desk = await desk.expect("INVITE")
    to_mobile = await mobile.expect("INVITE")
    assert isinstance(to_desk, Request)
    assert isinstance(to_mobile, Request)
    mobile.send(mobile.answer(to_mobile, 180), proxy.address)
    desk.send(desk.answer(to_desk, 180), proxy.address)
    desk.send(desk.answer(to_desk, 200), proxy.address)
    cancel = await mobile.expect("CANCEL", timeout=0.5)  # well before Timer C (1 s)
    assert isinstance(cancel, Request)
    assert cancel.top_via.branch == to_mobile.top_via.branch
    mobile.send(mobile.answer(cancel, 200), proxy.address)
    mobile.send(mobile.answer(to_mobile, 487), proxy.address)
    await caller.expect(200, skip=lambda m: isinstance(m, Response) and m.status == 180)
    assert (await mobile.expect("ACK")).cseq.method == "ACK"  # the 487 is ACKed hop by hop
    await caller.silence(0.3)  # and never reaches the caller


async def test_busy_and_ringing_devices_the_ringing_one_answers(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller, busy, free = await uas("alice"), await uas("busy"), await uas("free")
    await proxy.bind("bob", busy.contact, free.contact)
    await invite(caller, proxy)
    to_busy, to_free = await busy.expect("INVITE"), await free.expect("INVITE")
    assert isinstance(to_busy, Request)
    assert isinstance(to_free, Request)
    busy.send(busy.answer(to_busy, 486), proxy.address)
    await busy.expect("ACK")
    free.send(free.answer(to_free, 200), proxy.address)
    await caller.expect(200)


async def test_caller_cancel_gets_200_and_487_and_the_callee_a_cancel(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    sent = await invite(caller, proxy, branch="z9hG4bK-cancel-me")
    incoming = await bob.expect("INVITE")
    assert isinstance(incoming, Request)
    bob.send(bob.answer(incoming, 180), proxy.address)
    await caller.expect(180)
    cancel = caller.request(
        "CANCEL",
        sent.uri_text,
        call_id=sent.call_id,
        branch="z9hG4bK-cancel-me",
        to=sent.to.uri_text,
    )
    caller.send(cancel, proxy.address)
    answers = {(await caller.next()).status for _ in range(2)}
    assert answers == {200, 487}
    assert (await bob.expect("CANCEL", timeout=0.5)).cseq.method == "CANCEL"  # not Timer C


async def test_cancel_for_an_unknown_transaction_is_481(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller = await uas("alice")
    caller.send(caller.request("CANCEL", f"sip:bob@{DOMAIN}"), proxy.address)
    await caller.expect(481)


# Timer C and Timer B (a ringing callee cancelled, a callee that never answers) are
# tested on the proxy core with a fake clock: tests/core/proxy/test_core.py.


async def test_tcp_target_that_refuses_is_a_transport_error(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller = await uas("alice")
    await proxy.bind("bob", "sip:bob@127.0.0.1:9;transport=tcp")
    await invite(caller, proxy)
    # at once, not after Timer B (3.2 s); the branch's 503 goes upstream as 500 (§16.7)
    final = await caller.expect(500, timeout=2.0)
    assert final.reason == "Service Unavailable Downstream"


async def test_serial_forking_tries_the_lower_q_after_the_higher_fails(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy(serial_forking=True)
    caller, first, second = await uas("alice"), await uas("first"), await uas("second")
    await proxy.bind("bob", first.contact, q=1.0)
    await proxy.bind("bob", second.contact, q=0.5)
    await invite(caller, proxy)
    to_first = await first.expect("INVITE")
    assert isinstance(to_first, Request)
    await second.silence(0.2)
    first.send(first.answer(to_first, 486), proxy.address)
    to_second = await second.expect("INVITE")
    assert isinstance(to_second, Request)
    second.send(second.answer(to_second, 200), proxy.address)
    await caller.expect(200)


async def test_message_is_relayed_to_the_registered_contact(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    caller.send(caller.request("MESSAGE", f"sip:bob@{DOMAIN}"), proxy.address)
    incoming = await bob.expect("MESSAGE")
    assert isinstance(incoming, Request)
    assert not incoming.has("record-route")
    bob.send(bob.answer(incoming, 200), proxy.address)
    await caller.expect(200)


# -- authentication -------------------------------------------------------------------------------
def credentials(challenge: Response, request_uri: str, password: str = "secret") -> str:
    offered = parse_auth_header(challenge.header_lines("proxy-authenticate")[0])
    ha1 = compute_ha1("alice", DOMAIN, password, offered.algorithm)
    response = compute_response(
        ha1,
        "INVITE",
        request_uri,
        offered.nonce or "",
        offered.algorithm,
        "auth",
        "00000001",
        "cn0nce",
    )
    return (
        f'Digest username="alice", realm="{DOMAIN}", nonce="{offered.nonce}", '
        f'uri="{request_uri}", response="{response}", algorithm={offered.algorithm}, '
        'qop=auth, nc=00000001, cnonce="cn0nce"'
    )


async def test_local_caller_must_authenticate(start_proxy: ProxyFactory, uas: Any) -> None:
    proxy = await start_proxy(authenticate=True)
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    uri = f"sip:bob@{DOMAIN}"
    first = caller.request("INVITE", uri, call_id="auth-1@test")
    caller.send(first, proxy.address)
    challenge = await caller.expect(407, skip=is_trying)
    assert isinstance(challenge, Response)
    await bob.silence(0.1)

    wrong = caller.request(
        "INVITE",
        uri,
        call_id="auth-1@test",
        cseq=2,
        headers=(f"Proxy-Authorization: {credentials(challenge, uri, 'nope')}",),
    )
    caller.send(wrong, proxy.address)
    await caller.expect(407, skip=is_trying)

    right = caller.request(
        "INVITE",
        uri,
        call_id="auth-1@test",
        cseq=3,
        headers=(f"Proxy-Authorization: {credentials(challenge, uri)}",),
    )
    caller.send(right, proxy.address)
    incoming = await bob.expect("INVITE")
    assert not incoming.has("proxy-authorization")  # our realm's credentials end here


async def test_from_other_than_the_authenticated_user_is_403(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy(authenticate=True)
    caller = await uas("alice")
    uri = f"sip:bob@{DOMAIN}"
    caller.send(
        caller.request("INVITE", uri, call_id="auth-2@test", from_="sip:bob@example.com"),
        proxy.address,
    )
    challenge = await caller.expect(407, skip=is_trying)
    assert isinstance(challenge, Response)
    forged = caller.request(
        "INVITE",
        uri,
        call_id="auth-2@test",
        cseq=2,
        from_="sip:bob@example.com",
        headers=(f"Proxy-Authorization: {credentials(challenge, uri)}",),
    )
    caller.send(forged, proxy.address)
    await caller.expect(403, skip=is_trying)


# -- bad input and faults -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "headers", "status"),
    [
        ("sip:bob@example.com", ("Max-Forwards: 0",), 483),
        ("sip:bob@example.com", ("Proxy-Require: x-magic",), 420),
        ("http://example.com/bob", (), 416),
    ],
)
async def test_requests_the_proxy_refuses(
    start_proxy: ProxyFactory, uas: Any, uri: str, headers: tuple[str, ...], status: int
) -> None:
    proxy = await start_proxy()
    caller = await uas("alice")
    text = caller.request("OPTIONS", uri, headers=headers)
    if "Max-Forwards: 0" in headers:
        text = text.replace("Max-Forwards: 70\r\n", "")
    caller.send(text, proxy.address)
    await caller.expect(status)


async def test_options_to_the_proxy_itself_is_answered(start_proxy: ProxyFactory, uas: Any) -> None:
    proxy = await start_proxy()
    caller = await uas("lb")
    caller.send(caller.request("OPTIONS", f"sip:127.0.0.1:{proxy.address[1]}"), proxy.address)
    answer = await caller.expect(200)
    assert "INVITE" in (answer.header("allow") or "")


class DownStorage:
    """Storage whose database is unreachable."""

    def __init__(self, real: Storage) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def location(self) -> Any:
        class Location:
            async def lookup(self, aor: Any, now: int | None = None) -> Any:
                raise StorageUnavailable("database unreachable")

        return Location()


async def test_database_down_is_503_with_retry_after(
    start_proxy: ProxyFactory, uas: Any, storage: Storage
) -> None:
    proxy = await start_proxy(DownStorage(storage))
    caller = await uas("alice")
    await invite(caller, proxy)
    answer = await caller.expect(503)
    assert answer.header("retry-after") == "5"


async def test_overload_sheds_with_503(start_proxy: ProxyFactory, uas: Any) -> None:
    proxy = await start_proxy()
    proxy.engine.settings = type(proxy.engine.settings)(max_routing=0)
    caller = await uas("alice")
    caller.send(caller.request("INVITE", f"sip:bob@{DOMAIN}"), proxy.address)
    answer = await caller.expect(503)
    assert answer.header("retry-after")


class TaskBoundStorage(DownStorage):
    """Storage whose driver needs a current task (asyncio.timeout, as the network ones)."""

    @property
    def location(self) -> Any:
        real = self._real.location

        class Location:
            async def lookup(self, aor: Any, now: int | None = None) -> Any:
                async with asyncio.timeout(1.0):
                    return await real.lookup(aor, now=now)

        return Location()


async def test_routing_runs_in_a_task_the_drivers_can_time_out_in(
    start_proxy: ProxyFactory, uas: Any, storage: Storage
) -> None:
    proxy = await start_proxy(TaskBoundStorage(storage))
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    await invite(caller, proxy)
    assert (await bob.expect("INVITE")).method == "INVITE"


async def test_while_overloaded_new_calls_get_503_and_dialogs_go_on(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller, bob = await uas("alice"), await uas("bob")
    proxy.engine.overload.observe(0.0, 1 << 30)  # the socket buffer is full
    caller.send(caller.request("INVITE", f"sip:bob@{DOMAIN}"), proxy.address)
    refused = await caller.expect(503)
    assert refused.header("retry-after")
    unrouted = caller.request("BYE", bob.contact, to_tag="b1", call_id="dialog@test")
    route = proxy.engine.dialog_tokens.stamp(
        f"<sip:127.0.0.1:{proxy.address[1]};lr>", parse_request(unrouted)
    )
    bye = caller.request(
        "BYE", bob.contact, to_tag="b1", headers=(f"Route: {route}",), call_id="dialog@test"
    )
    caller.send(bye, proxy.address)
    assert (await bob.expect("BYE")).call_id == "dialog@test"


@pytest.mark.parametrize("retry", [True, False])
async def test_a_miss_on_the_replica_is_retried_on_the_primary(
    tmp_path: Path, start_proxy: ProxyFactory, uas: Any, storage: Storage, retry: bool
) -> None:
    """The phone has just registered: the binding is on the primary, not yet on the
    replica (a copy of the primary taken before the REGISTER)."""
    replica = tmp_path / "replica.db"
    primary = storage.dsns.write
    assert primary.path is not None
    with (
        closing(sqlite3.connect(primary.path)) as source,
        closing(sqlite3.connect(replica)) as copy,
    ):
        source.backup(copy)  # the WAL's content too
    lagging = open_storage(
        Dsns(primary, (Dsn.parse(f"sqlite:///{replica}"),)), retry_primary_on_miss=retry
    )
    try:
        proxy = await start_proxy(lagging)
        caller, bob = await uas("alice"), await uas("bob")
        await proxy.bind("bob", bob.contact)  # written to the primary
        await invite(caller, proxy)
        if retry:
            assert (await bob.expect("INVITE")).method == "INVITE"
        else:
            await caller.expect(480)  # bob is a subscriber without a binding, as far as it knows
    finally:
        await lagging.close()


async def test_behind_a_trusted_lb_the_origin_is_what_the_lb_stamped(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    """A gateway's call through the LB (127.0.0.1, a trusted LB) skips authentication
    because the Via the LB stamped names the gateway, not because the LB is trusted."""
    proxy = await start_proxy(authenticate=True, trusted_peers=["192.0.2.77"])
    lb, bob = await uas("lb"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    gateway_via = "Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-gw-1;received=192.0.2.77"
    call = lb.request("INVITE", f"sip:bob@{DOMAIN}", headers=(gateway_via,))
    lb.send(call, proxy.address)
    assert (await bob.expect("INVITE")).method == "INVITE"  # no 407 on the way
    stranger_via = "Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-gw-2;received=198.51.100.1"
    lb.send(lb.request("INVITE", f"sip:bob@{DOMAIN}", headers=(stranger_via,)), proxy.address)
    await lb.expect(407, skip=is_trying)


class RecordingHooks(MessageHooks):
    """What a privacy feature would see: it tags our Record-Route and every message."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def record_route(self, call: CallContext, ours: str) -> str:
        return ours[:-1] + ";pv=sealed>"  # a parameter of its own, as PrivacyHooks adds

    def forwarding(self, request: Request, call: CallContext | None) -> None:
        self.seen.append(f"{request.method} {'in call' if call else 'stateless'}")
        request.add_header("X-Seen", "yes")

    def answering(self, response: Response, call: CallContext) -> None:
        self.seen.append(f"{response.status} {call.method}")


async def test_hooks_see_every_message_the_proxy_sends_on(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    hooks = RecordingHooks()
    proxy = await start_proxy(hooks=hooks)
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    sent = await invite(caller, proxy)
    incoming = await bob.expect("INVITE")
    assert incoming.header("x-seen") == "yes"
    assert incoming.header_values("record-route")[0].endswith(";pv=sealed>")
    bob.send(bob.answer(incoming, 200), proxy.address)
    answer = await caller.expect(200)
    assert isinstance(answer, Response)
    ack = in_dialog(
        caller,
        "ACK",
        answer,
        request_uri=bob.contact,
        from_=sent.from_.uri_text,
        to=sent.to.uri_text,
        from_tag="caller",
        to_tag="bob",
        cseq=1,
    )
    caller.send(ack, proxy.address)
    assert (await bob.expect("ACK")).header("x-seen") == "yes"
    assert hooks.seen == ["INVITE in call", "200 INVITE", "ACK stateless"]


# -- no open relay (a Route or To tag claims a dialog the cluster never made) ----------------
@pytest.mark.parametrize("method", ["MESSAGE", "INVITE", "BYE"])
@pytest.mark.parametrize("trick", ["loose", "strict", "foreign-dialog"])
async def test_a_claimed_dialog_does_not_relay_to_the_senders_address(
    start_proxy: ProxyFactory, uas: Any, method: str, trick: str
) -> None:
    """The reproduction of the open relay: a To tag and a Route naming the proxy, the
    strict-route form (Request-URI = the proxy), or a Route with a real dialog token of
    another call. None reaches the address the sender chose; the request is handled as
    a new one (here: a caller of another domain to another domain: 403)."""
    proxy = await start_proxy(authenticate=True)
    attacker, victim = await uas("mallory"), await uas("anyone")
    ours = f"<sip:127.0.0.1:{proxy.address[1]};lr>"
    target = victim.contact.replace("anyone@", "anyone@")
    if trick == "loose":
        uri, routes = target, (f"Route: {ours}",)
    elif trick == "strict":
        uri, routes = f"sip:127.0.0.1:{proxy.address[1]}", (f"Route: <{target}>",)
    else:
        other_call = parse_request(attacker.request("INVITE", target, call_id="theirs@test"))
        uri, routes = target, (f"Route: {proxy.engine.dialog_tokens.stamp(ours, other_call)}",)
    text = attacker.request(
        method,
        uri,
        from_="sip:ceo@bank.example",
        to="sip:anyone@elsewhere.example",
        to_tag="made-up",
        call_id="relay-repro@test",
        headers=routes,
    )
    attacker.send(text, proxy.address)
    answer = await attacker.expect(403, skip=is_trying)
    assert isinstance(answer, Response)
    await victim.silence(0.2)
    assert proxy.engine.stats.foreign_routes == 1


async def test_a_local_callers_claimed_dialog_must_authenticate(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy(authenticate=True)
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    route = f"Route: <sip:127.0.0.1:{proxy.address[1]};lr>"
    text = caller.request("BYE", bob.contact, to_tag="b1", headers=(route,))
    caller.send(text, proxy.address)
    await caller.expect(407, skip=is_trying)
    await bob.silence(0.2)


async def test_a_2xx_ack_without_this_dialogs_token_is_dropped(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    proxy = await start_proxy()
    caller, bob = await uas("alice"), await uas("bob")
    route = f"Route: <sip:127.0.0.1:{proxy.address[1]};lr>"
    ack = caller.request("ACK", bob.contact, to_tag="b1", headers=(route,))
    caller.send(ack, proxy.address)
    await bob.silence(0.2)
    assert proxy.engine.stats.acks_dropped == 1


async def test_a_request_too_large_for_a_datagram_once_forwarded_gets_513(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    """It arrived as one datagram; our Via and Record-Route make it larger than any."""
    proxy = await start_proxy()
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    head = caller.request("INVITE", f"sip:bob@{DOMAIN}", to=f"sip:bob@{DOMAIN}")
    room = 65_507 - len(head) - 40  # a body that leaves less room than our headers take
    body = "v=0\r\n" + "a=x-padding:" + "p" * (room - 20) + "\r\n"
    text = head.replace("Content-Length: 0", f"Content-Length: {len(body)}") + body
    assert len(text.encode("latin-1")) <= 65_507
    caller.send(text, proxy.address)
    refused = await caller.expect(513, skip=is_trying)
    assert isinstance(refused, Response)
    await bob.silence(0.2)
