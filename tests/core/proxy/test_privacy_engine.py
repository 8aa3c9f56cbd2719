"""Caller privacy through the proxy engine over real UDP sockets on 127.0.0.1: two proxies
of one pool (B treats A's address as its own, ``proxy.aliases``) with the privacy hooks,
scripted UAs as caller and callee, the location table and preferences in SQLite."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sipfleet.config import config_from_dict
from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.proxy.engine import ProxyEngine
from sipfleet.core.proxy.privacy_hooks import PrivacyHooks
from sipfleet.roles.proxy import build_engine
from sipfleet.sip import Request, Response, parse_message
from sipfleet.sip.privacy import ANONYMOUS_URI
from sipfleet.storage import Aor, BindingUpdate, Storage, open_storage
from sipfleet.storage.dsn import Dsn
from sipfleet.storage.migrate import upgrade
from tests.core.proxy.ua import UA, in_dialog

DOMAIN = "example.com"
ALICE = "sip:alice@example.com"
ANONYMOUS = f'"Anonymous" <{ANONYMOUS_URI}>;tag=caller'
ALICE_FROM = f"<{ALICE}>;tag=caller"  # as UA.request writes it


def is_trying(message: object) -> bool:
    return isinstance(message, Response) and message.status == 100


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    dsn = f"sqlite:///{tmp_path / 'privacy.db'}"
    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    yield storage
    await storage.close()


@pytest.fixture
async def ua() -> AsyncIterator[Callable[[str], Awaitable[UA]]]:
    started: list[UA] = []

    async def make(name: str) -> UA:
        started.append(await UA.start(name))
        return started[-1]

    yield make
    for each in started:
        each.close()


class Pool:
    """Proxies A and B; B takes A's Route as its own."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.running: list[tuple[ProxyEngine, SipEndpoint]] = []

    async def start(self, **proxy: Any) -> tuple[str, int]:
        config = config_from_dict(
            {
                "node": {"cluster_secret": "pool-secret"},
                "sip": {"domains": [DOMAIN], "t1_ms": 50, "timer_c_s": 1},
                "proxy": {"authenticate": False, **proxy},
            }
        )
        endpoint = SipEndpoint([ListenAddress("udp", "127.0.0.1", 0)])
        hooks = PrivacyHooks.from_config(config)
        engine = build_engine(config, self.storage, endpoint, hooks=hooks)
        endpoint.handler = engine
        await endpoint.start()
        self.running.append((engine, endpoint))
        return ("127.0.0.1", endpoint.addresses[0].port)

    async def bind(self, user: str, contact: str) -> None:
        now = int(time.time())
        update = BindingUpdate(contact, now + 600, f"reg-{user}", 1)
        await self.storage.location.save(Aor(user, DOMAIN), [update], now=now, max_contacts=10)

    async def close(self) -> None:
        for engine, endpoint in self.running:
            await engine.close()
            await endpoint.close()


@pytest.fixture
async def pool(storage: Storage) -> AsyncIterator[Pool]:
    made = Pool(storage)
    yield made
    await made.close()


async def two_proxies(pool: Pool, **proxy: Any) -> tuple[tuple[str, int], tuple[str, int]]:
    first = await pool.start(**proxy)
    second = await pool.start(aliases=[f"{first[0]}:{first[1]}"], **proxy)
    return first, second


async def call(caller: UA, callee: UA, proxy: tuple[str, int], *headers: str) -> Request:
    """The caller's INVITE; returns it as the callee got it."""
    text = caller.request("INVITE", f"sip:bob@{DOMAIN}", headers=headers)
    caller.send(text, proxy)
    await caller.expect(100)
    incoming = await callee.expect("INVITE")
    assert isinstance(incoming, Request)
    return incoming


async def test_a_private_dialog_survives_on_another_proxy_of_the_pool(
    pool: Pool, ua: Callable[[str], Awaitable[UA]]
) -> None:
    first, second = await two_proxies(pool, privacy_hide_contact_user=True)
    caller, bob = await ua("alice"), await ua("bob")
    await pool.bind("bob", bob.contact)
    incoming = await call(
        caller, bob, first, "Privacy: id", "P-Asserted-Identity: <sip:alice@example.com>"
    )
    assert incoming.header("From") == ANONYMOUS
    assert not incoming.has("P-Asserted-Identity")
    assert incoming.header("Contact") == f"<sip:anonymous@{caller.address}>"
    assert ";pv=" in incoming.header_values("record-route")[0]

    bob.send(bob.answer(incoming, 180), first)
    bob.send(bob.answer(incoming, 200), first)
    assert (await caller.expect(180)).header("From") == ALICE_FROM
    answer = await caller.expect(200)
    assert isinstance(answer, Response)
    assert answer.header("From") == ALICE_FROM

    # proxy A is gone from now on: everything goes through B
    def from_alice(method: str, cseq: int) -> str:
        return in_dialog(
            caller,
            method,
            answer,
            request_uri=bob.contact,
            from_=ALICE,
            to=f"sip:bob@{DOMAIN}",
            from_tag="caller",
            to_tag="bob",
            cseq=cseq,
        )

    caller.send(from_alice("ACK", 1), second)
    assert (await bob.expect("ACK")).header("From") == ANONYMOUS
    caller.send(from_alice("INVITE", 2), second)
    await caller.expect(100)
    reinvite = await bob.expect("INVITE")
    assert isinstance(reinvite, Request)
    assert reinvite.header("From") == ANONYMOUS
    bob.send(bob.answer(reinvite, 200), second)
    assert (await caller.expect(200)).header("From") == ALICE_FROM

    bye = in_dialog(
        bob,
        "BYE",
        answer,
        request_uri=f"sip:anonymous@{caller.address}",
        from_=f"sip:bob@{DOMAIN}",
        to=ANONYMOUS_URI,
        from_tag="bob",
        to_tag="caller",
        cseq=1,
        reverse_routes=True,
    )
    bob.send(bye, second)
    incoming_bye = await caller.expect("BYE")
    assert isinstance(incoming_bye, Request)
    assert incoming_bye.header("To") == ALICE_FROM
    assert incoming_bye.uri_text == caller.contact  # its Contact user back
    caller.send(caller.answer(incoming_bye, 200, tag="caller"), second)
    ok = await bob.expect(200)
    assert ok.header("To") == ANONYMOUS


async def test_the_callee_sees_only_anonymous_in_the_cancel_and_the_ack_the_proxy_builds(
    pool: Pool, ua: Callable[[str], Awaitable[UA]]
) -> None:
    first = await pool.start()
    caller, bob = await ua("alice"), await ua("bob")
    await pool.bind("bob", bob.contact)
    incoming = await call(caller, bob, first, "Privacy: id")
    bob.send(bob.answer(incoming, 180), first)
    await caller.expect(180)
    caller.send(
        caller.request("CANCEL", f"sip:bob@{DOMAIN}", branch=incoming.vias[1].branch), first
    )
    assert (await caller.expect(200)).header("From") == ALICE_FROM  # the CANCEL's
    terminated = await caller.expect(487)
    assert terminated.header("From") == ALICE_FROM
    cancel = await bob.expect("CANCEL")
    assert cancel.header("From") == ANONYMOUS
    bob.send(bob.answer(incoming, 487), first)
    assert (await bob.expect("ACK")).header("From") == ANONYMOUS


async def test_the_no_answer_408_reaches_the_caller_with_its_from(
    pool: Pool, ua: Callable[[str], Awaitable[UA]], storage: Storage
) -> None:
    first = await pool.start()
    caller, bob = await ua("alice"), await ua("bob")
    await pool.bind("bob", bob.contact)
    await storage.preferences.set("alice", DOMAIN, "clir", "on")  # no Privacy header
    incoming = await call(caller, bob, first)
    assert incoming.header("From") == ANONYMOUS
    bob.send(bob.answer(incoming, 180), first)
    await caller.expect(180)
    cancel = await bob.expect("CANCEL", timeout=3.0)  # Timer C (1 s)
    assert isinstance(cancel, Request)
    assert cancel.header("From") == ANONYMOUS
    bob.send(bob.answer(cancel, 200), first)
    bob.send(bob.answer(incoming, 487), first)
    timeout = await caller.expect(408, timeout=3.0)
    assert timeout.header("From") == ALICE_FROM


async def test_a_tampered_route_value_is_ignored_and_logged(
    pool: Pool, ua: Callable[[str], Awaitable[UA]], caplog: pytest.LogCaptureFixture
) -> None:
    first, second = await two_proxies(pool)
    caller, bob = await ua("alice"), await ua("bob")
    await pool.bind("bob", bob.contact)
    incoming = await call(caller, bob, first, "Privacy: id")
    bob.send(bob.answer(incoming, 200), first)
    answer = await caller.expect(200, skip=is_trying)
    assert isinstance(answer, Response)
    ours = answer.header_values("record-route")[0]
    at = ours.index("pv=") + 13
    forged = ours[:at] + ("A" if ours[at] != "A" else "B") + ours[at + 1 :]
    bye = in_dialog(
        bob,
        "BYE",
        answer,
        request_uri=caller.contact,
        from_=f"sip:bob@{DOMAIN}",
        to=ANONYMOUS_URI,
        from_tag="bob",
        to_tag="caller",
        cseq=1,
    ).replace(ours, forged)
    caplog.set_level(logging.WARNING, logger="sipfleet.privacy")
    bob.send(bye, second)
    incoming_bye = await caller.expect("BYE")
    assert incoming_bye.header("To") == f"<{ANONYMOUS_URI}>;tag=caller"  # as bob sent it
    assert "ignored" in caplog.text
    assert incoming_bye.call_id in caplog.text


async def test_a_caller_without_privacy_is_untouched(
    pool: Pool, ua: Callable[[str], Awaitable[UA]]
) -> None:
    first = await pool.start(privacy_hide_contact_user=True)
    caller, bob = await ua("alice"), await ua("bob")
    await pool.bind("bob", bob.contact)
    sent = parse_message(caller.request("INVITE", f"sip:bob@{DOMAIN}").encode())
    incoming = await call(caller, bob, first)
    for name in ("From", "To", "Contact"):
        assert incoming.header(name) == sent.header(name)
    assert ";pv=" not in incoming.header_values("record-route")[0]
    bob.send(bob.answer(incoming, 200), first)
    answer = await caller.expect(200)
    assert answer.header("From") == sent.header("From")
