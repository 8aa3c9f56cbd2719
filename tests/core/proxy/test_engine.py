"""The proxy's asyncio shell (``ProxyEngine``) over real sockets on 127.0.0.1, with a
temporary SQLite database; scripted UAs play caller and callees.

Only what the shell itself does is tested here: the core's actions become datagrams
on a socket and timers on the loop, the policy and the database run in tasks, the
shell's answers to routing errors and send failures, and the endpoint's answer to the
core's parse errors. Everything else the proxy does (§16: forking, CANCEL, Timer C,
authentication, the open-relay checks, hooks, failover, privacy) is tested on the
sans-IO core with a fake clock: test_core*.py."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sipfleet.config import Config, config_from_dict
from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.engine import ProxyEngine
from sipfleet.core.proxy.hooks import NO_HOOKS, MessageHooks
from sipfleet.roles.proxy import build_engine
from sipfleet.routing.lcr import PHONE
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.sip import Request, Response, parse_message
from sipfleet.sip.transaction import CancelTimer, ClientInviteTransaction, StartTimer, Timer
from sipfleet.storage import Storage, StorageUnavailable
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget
from tests.core.proxy.harness import DOMAIN, bind
from tests.core.proxy.ua import UA, in_dialog
from tests.sip.transaction.harness import request


def is_trying(message: object) -> bool:
    return isinstance(message, Response) and message.status == 100


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

    async def bind(self, user: str, *contacts: str) -> None:
        await bind(self.storage, user, *contacts)


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


async def test_the_core_makes_call_records_only_while_the_engine_keeps_them(
    storage: Storage,
) -> None:
    engine = build_engine(make_config(), storage, SipEndpoint([]))
    assert engine.accounting is not None  # on by default
    assert engine.core.records_calls
    accounting, engine.accounting = engine.accounting, None
    assert not engine.core.records_calls
    engine.accounting = accounting
    assert engine.core.records_calls


async def test_basic_call_with_bye_from_the_callee(start_proxy: ProxyFactory, uas: Any) -> None:
    """The shell end to end: datagrams in become events, the core's sends become
    datagrams out to the right addresses, the policy and the location lookup run in a
    task, the 2xx ACK goes through the stateless forwarder."""
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


async def test_tcp_target_that_refuses_is_a_transport_error(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    """A connect that fails after the send was handed over: the endpoint reports it to
    the shell (``on_send_error``), which feeds ``destination_failed`` to the core."""
    proxy = await start_proxy()
    caller = await uas("alice")
    await proxy.bind("bob", "sip:bob@127.0.0.1:9;transport=tcp")
    await invite(caller, proxy)
    # at once, not after Timer B (3.2 s); the branch's 503 goes upstream as 500 (§16.7)
    final = await caller.expect(500, timeout=2.0)
    assert final.reason == "Service Unavailable Downstream"


class DownStorage:
    """Storage whose database is unreachable."""

    def __init__(self, real: Storage) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def location(self) -> Any:
        class Location:
            async def lookup_routes(self, aor: Any, now: int | None = None) -> Any:
                raise StorageUnavailable("database unreachable")

        return Location()


async def test_database_down_is_503_with_retry_after(
    start_proxy: ProxyFactory, uas: Any, storage: Storage
) -> None:
    """The shell runs the policy and the plan and turns a database error into the
    ``Reply`` it feeds back: 503 with Retry-After."""
    proxy = await start_proxy(DownStorage(storage))
    caller = await uas("alice")
    await invite(caller, proxy)
    answer = await caller.expect(503)
    assert (answer.reason, answer.header("retry-after")) == ("Service Unavailable", "5")


class TaskBoundStorage(DownStorage):
    """Storage whose driver needs a current task (asyncio.timeout, as the network ones)."""

    @property
    def location(self) -> Any:
        real = self._real.location

        class Location:
            async def lookup_routes(self, aor: Any, now: int | None = None) -> Any:
                async with asyncio.timeout(1.0):
                    return await real.lookup_routes(aor, now=now)

        return Location()


async def test_routing_runs_in_a_task_the_drivers_can_time_out_in(
    start_proxy: ProxyFactory, uas: Any, storage: Storage
) -> None:
    """``AskPolicy`` becomes a task of the loop: a driver's ``asyncio.timeout`` works."""
    proxy = await start_proxy(TaskBoundStorage(storage))
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    await invite(caller, proxy)
    assert (await bob.expect("INVITE")).method == "INVITE"


async def test_a_request_too_large_for_a_datagram_once_forwarded_gets_513(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    """It arrived as one datagram; our Via and Record-Route make it larger than any: the
    socket refuses the send, and the shell feeds ``send_failed(513)`` to the core."""
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


async def test_timer_a_runs_on_the_loop(start_proxy: ProxyFactory, uas: Any) -> None:
    """``StartTimer`` becomes a loop timer: an unanswered INVITE is sent again after
    T1 (50 ms here), as the core's Timer A asks."""
    proxy = await start_proxy()
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)
    await invite(caller, proxy)
    first = await bob.expect("INVITE")
    again = await bob.expect("INVITE", timeout=1.0)
    assert isinstance(first, Request)
    assert isinstance(again, Request)
    assert again.top_via.branch == first.top_via.branch
    assert proxy.engine.armed > 0


async def test_a_request_uri_of_another_scheme_is_answered_416_by_the_endpoint(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    """The core raises the parse error of the lazily parsed Request-URI; the endpoint
    (the shell's handler's caller) answers it."""
    proxy = await start_proxy()
    caller = await uas("alice")
    caller.send(caller.request("OPTIONS", "http://example.com/bob"), proxy.address)
    await caller.expect(416)


async def test_a_defunct_gateway_is_probed_from_the_proxys_address(
    storage: Storage, uas: Any
) -> None:
    """The prober is the shell's: it sends OPTIONS on the endpoint's socket, and the
    answer the core hands back as ``Unmatched`` reaches it (the LCR's health:
    test_core_failover, on the fake clock)."""
    gateway = await uas("gw1")
    await storage.lcr.replace_all(
        LcrRows(
            (Gateway("gw1", "127.0.0.1", gateway.port),),
            (GatewayCapability("gw1", PHONE, "01"),),
            (Rule(1, "43"),),
            (RuleTarget(1, "gw1", PHONE, priority=1),),
        )
    )
    config = make_config(lcr_defunct_after=1, lcr_defunct_s=30, lcr_probe_interval_s=0.05)
    endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
    router = LcrRouter.from_config(config, storage.lcr)
    engine = build_engine(config, storage, endpoint, off_net=router)
    endpoint.handler = engine
    await endpoint.start()
    await router.start(engine.prober)
    try:
        router.trunk_ended("gw1", 503, False)
        assert router.health.is_defunct("gw1", router.clock())
        probe = await gateway.expect("OPTIONS", timeout=1.5)
        assert isinstance(probe, Request)
        assert probe.uri_text == f"sip:127.0.0.1:{gateway.port}"
        assert probe.top_via.port == endpoint.addresses[0].port  # from the proxy's address
        gateway.send(gateway.answer(probe, 200), ("127.0.0.1", endpoint.addresses[0].port))
        for _ in range(100):
            if not router.health.is_defunct("gw1", router.clock()):
                break
            await asyncio.sleep(0.01)
        assert not router.health.is_defunct("gw1", router.clock())
    finally:
        await router.close()
        await engine.close()
        await endpoint.close()


async def test_calls_through_the_shell_leave_no_reference_cycles(
    start_proxy: ProxyFactory, uas: Any
) -> None:
    """What the shell adds to the core (tasks for the policy, database queries, timers on
    the loop, the endpoint's parsing and sends) is freed by reference counting too: the
    role collects only its young generation (roles/collector.py), so a cycle that
    outlived one walk would stay until the process is quiet."""
    proxy, guarded = await start_proxy(), await start_proxy(authenticate=True)
    caller, bob = await uas("alice"), await uas("bob")
    await proxy.bind("bob", bob.contact)

    async def answered_call(n: int) -> None:
        await invite(caller, proxy, call_id=f"ok-{n}")
        incoming = await bob.expect("INVITE")
        bob.send(bob.answer(incoming, 200), proxy.address)
        await caller.expect(200)

    async def refused(n: int) -> None:
        uri, branch = f"sip:nobody@{DOMAIN}", f"z9hG4bK-no-{n}"
        caller.send(caller.request("INVITE", uri, call_id=f"no-{n}", branch=branch), proxy.address)
        not_found = await caller.expect(404, skip=is_trying)
        ack = caller.request("ACK", uri, call_id=f"no-{n}", branch=branch, to_tag=not_found.to.tag)
        caller.send(ack, proxy.address)  # or the 404 comes again (Timer G)
        stray = caller.request("BYE", f"sip:bob@{DOMAIN}", to_tag="gone", call_id=f"bye-{n}")
        caller.send(stray, guarded.address)
        await caller.expect(407)

    await answered_call(0)  # what is made once (statements, pools) is made now
    await refused(0)
    gc.collect()
    gc.disable()
    try:
        for n in range(1, 21):
            await answered_call(n)
            await refused(n)
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_timers_are_disarmed_and_rearmed_on_the_loop(start_proxy: ProxyFactory) -> None:
    """A short timer is a loop handle, cancelled when disarmed or armed again; a long one
    waits in a coarse slot (an int), dropped from the table when disarmed."""
    proxy = await start_proxy()
    engine = proxy.engine
    client = ClientInviteTransaction(request("INVITE"))
    engine.execute([StartTimer(client, Timer.A, 0.5)])
    first = engine._timers[(client, Timer.A)]
    assert isinstance(first, asyncio.TimerHandle)
    engine.execute([StartTimer(client, Timer.A, 0.5)])
    second = engine._timers[(client, Timer.A)]
    assert isinstance(second, asyncio.TimerHandle)
    assert first.cancelled()
    assert not second.cancelled()
    engine.execute([StartTimer(client, Timer.B, 32.0)])
    assert isinstance(engine._timers[(client, Timer.B)], int)
    assert engine.armed == 2
    engine.execute([CancelTimer(client, Timer.A), CancelTimer(client, Timer.B)])
    assert second.cancelled()
    assert engine.armed == 0


async def test_subclasses_of_the_transaction_actions_are_carried_out_too(
    start_proxy: ProxyFactory,
) -> None:
    """``execute`` takes ``StartTimer`` and ``CancelTimer`` by exact type first; a subclass
    goes through the isinstance tests and is armed and disarmed all the same."""

    class MyStart(StartTimer):
        pass

    class MyCancel(CancelTimer):
        pass

    proxy = await start_proxy()
    engine = proxy.engine
    client = ClientInviteTransaction(request("INVITE"))
    engine.execute([MyStart(client, Timer.B, 32.0)])
    assert engine.armed == 1
    engine.execute([MyCancel(client, Timer.B)])
    assert engine.armed == 0
