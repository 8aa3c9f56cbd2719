"""The registrar's core on a fake clock, without sockets: what it answers to copies of
requests it has served, and to REGISTERs when the database stops answering or cannot be
reached."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipfleet.config import Config, config_from_dict
from sipfleet.core.registrar import (
    STORAGE_DEADLINE,
    UNAVAILABLE_WARNINGS_PER_MINUTE,
    Registrar,
)
from sipfleet.sip import Request, parse_message
from sipfleet.sip.digest import compute_ha1, compute_response, format_credentials, parse_auth_header
from sipfleet.storage import Dsn, Storage, Subscriber, open_storage
from sipfleet.storage.migrate import upgrade
from sipfleet.storage.model import Binding
from sipfleet.transport.base import Peer
from tests.core.test_registrar_overload import SentBytes, StuckLocation, StuckStorage

DOMAIN = "example.com"
PEER = Peer("udp", "127.0.0.1", 5100, "127.0.0.1", 5060, 7)
_branches = itertools.count()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(authenticate: bool) -> Config:
    return config_from_dict(
        {
            "node": {"cluster_secret": "test"},
            "sip": {"domains": [DOMAIN], "auth_algorithms": ["MD5"]},
            "registrar": {"authenticate": authenticate},
        }
    )


def register(user: str, *, branch: str | None = None, authorization: str = "") -> Request:
    text = (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5100;branch={branch or f'z9hG4bK-{next(_branches)}'}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=t\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: call-{user}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:5100>\r\n"
        f"{f'Authorization: {authorization}' + chr(13) + chr(10) if authorization else ''}"
        "Content-Length: 0\r\n\r\n"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    return request


def credentials(challenge: str, user: str = "alice", nc: str = "00000001") -> str:
    parsed = parse_auth_header(challenge)
    nonce = parsed.nonce or ""
    ha1 = compute_ha1(user, DOMAIN, "secret", "MD5")
    uri = f"sip:{DOMAIN}"
    response = compute_response(ha1, "REGISTER", uri, nonce, "MD5", "auth", nc, "cafe")
    return format_credentials(user, DOMAIN, nonce, uri, response, "MD5", "auth", nc, "cafe")


async def settle(registrar: Registrar) -> None:
    """Until every REGISTER task the registrar started has finished."""
    while registrar._tasks:
        await asyncio.gather(*registrar._tasks)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    dsn = f"sqlite://{tmp_path / 'registrar.db'}"
    await upgrade(Dsn.parse(dsn))
    storage = open_storage(dsn)
    ha1 = compute_ha1("alice", DOMAIN, "secret", "MD5")
    await storage.subscribers.add(
        Subscriber("alice", DOMAIN, ha1, compute_ha1("alice", DOMAIN, "secret", "SHA-256"))
    )
    yield storage
    await storage.close()


async def test_a_copy_of_a_served_authenticated_register_gets_the_same_200_much_later(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """More than 20,000 other answers and more than 8 s later (what the old cache held):
    the copy is answered from what was sent, not worked on again into a false 401."""
    caplog.set_level(logging.INFO)
    clock, endpoint = FakeClock(), SentBytes()
    registrar = Registrar(config(True), storage, endpoint, clock=clock)  # type: ignore[arg-type]
    registrar.on_request(register("alice"), PEER)
    await settle(registrar)
    [challenge] = endpoint.take()
    assert challenge.status == 401
    authorization = credentials(challenge.header("www-authenticate") or "")
    served = register("alice", branch="z9hG4bK-served", authorization=authorization)
    registrar.on_request(served, PEER)
    await settle(registrar)
    [ok] = endpoint.sent
    [answer] = endpoint.take()
    assert answer.status == 200

    for i in range(20_001):  # 10 s of other clients' challenges
        clock.now += 10.0 / 20_001
        registrar.on_request(register(f"other{i}"), PEER)
        if i % 100 == 0:  # as they come: under database.max_in_flight at a time
            await settle(registrar)
    await settle(registrar)
    assert len(endpoint.take()) == 20_001

    registrar.on_request(served.copy(), PEER)  # the retransmission
    assert endpoint.sent == [ok]
    assert "nonce-count replayed" not in caplog.text
    endpoint.sent.clear()
    # Replay protection stands: the same credentials in a new request are refused.
    registrar.on_request(register("alice", authorization=authorization), PEER)
    await settle(registrar)
    [replayed] = endpoint.take()
    assert replayed.status == 401
    assert "nonce-count replayed" in caplog.text


async def turn() -> None:
    """Let the REGISTER tasks run up to where they wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_stalled_database_gets_503_at_the_deadline_then_at_once_then_recovers() -> None:
    clock, endpoint, location = FakeClock(), SentBytes(), StuckLocation()
    registrar = Registrar(
        config(False),
        StuckStorage(location),  # type: ignore[arg-type]
        endpoint,  # type: ignore[arg-type]
        clock=clock,
    )
    first = register("first")
    registrar.on_request(first, PEER)
    await turn()
    clock.now += STORAGE_DEADLINE * 0.9
    registrar.check_deadlines()
    assert endpoint.sent == []  # still within the deadline
    clock.now += STORAGE_DEADLINE * 0.1
    registrar.check_deadlines()
    [late] = endpoint.take()
    assert (late.status, late.call_id, late.header("retry-after")) == (503, "call-first", "5")

    # Stalled: one REGISTER goes on to the database (the probe); the others get 503 at once.
    registrar.on_request(register("probe"), PEER)
    for user in ("second", "third"):
        registrar.on_request(register(user), PEER)
    await turn()
    assert [(a.status, a.call_id) for a in endpoint.take()] == [
        (503, "call-second"),
        (503, "call-third"),
    ]
    assert location.waiting == 2  # the first and the probe: nothing else waits on it
    registrar.on_request(first.copy(), PEER)  # a copy of the first: the same 503
    assert [a.status for a in endpoint.take()] == [503]

    location.release.set()  # the lock is released
    await settle(registrar)
    # The probe is served; the first's late outcome is dropped (it had its answer).
    assert [(a.status, a.call_id) for a in endpoint.take()] == [(200, "call-probe")]
    registrar.on_request(register("after"), PEER)
    await settle(registrar)
    assert [(a.status, a.call_id) for a in endpoint.take()] == [(200, "call-after")]
    assert (registrar.refused_stalled, registrar.stall.stalls) == (3, 1)
    assert not registrar.stall.stalled


@pytest.mark.parametrize("authenticate", [False, True], ids=["write", "ha1-read"])
async def test_a_database_that_cannot_be_reached_gets_503_with_retry_after(
    tmp_path: Path, authenticate: bool
) -> None:
    """No database file (as a refused connection): the location write, or the read of the
    caller's HA1, fails at once. 503 with Retry-After (RFC 3261 §21.5.4), which sends an
    RFC 3263 client on to another server; a 500 would not."""
    storage = open_storage(f"sqlite://{tmp_path / 'gone' / 'registrar.db'}")
    endpoint = SentBytes()
    registrar = Registrar(config(authenticate), storage, endpoint)  # type: ignore[arg-type]
    authorization = ""
    if authenticate:  # the challenge needs no database; the credentials do
        registrar.on_request(register("alice"), PEER)
        await settle(registrar)
        [challenge] = endpoint.take()
        authorization = credentials(challenge.header("www-authenticate") or "")
    try:
        registrar.on_request(register("alice", authorization=authorization), PEER)
        await settle(registrar)
    finally:
        await storage.close()
    [answer] = endpoint.take()
    assert (answer.status, answer.reason) == (503, "Service Unavailable")
    assert answer.header("retry-after") == "5"


async def test_an_outage_is_logged_in_a_few_lines_not_one_per_register(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every REGISTER of an outage is refused; the log says so a few times, with a count
    of the rest, not once per REGISTER (at hundreds a second, a flood)."""
    storage = open_storage(f"sqlite://{tmp_path / 'gone' / 'registrar.db'}")
    endpoint = SentBytes()
    registrar = Registrar(config(False), storage, endpoint)  # type: ignore[arg-type]
    try:
        for i in range(40):
            registrar.on_request(register(f"u{i}"), PEER)
            await settle(registrar)
    finally:
        await storage.close()
    assert [a.status for a in endpoint.take()] == [503] * 40
    lines = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert 1 <= len(lines) <= UNAVAILABLE_WARNINGS_PER_MINUTE


class BrokenLocation:
    async def save(self, *args: object, **kwargs: object) -> list[Binding]:
        raise RuntimeError("a bug in the registrar")


@dataclass
class BrokenStorage:
    location: BrokenLocation


async def test_a_bug_behind_a_register_is_still_500() -> None:
    """Only an unavailable database is 503: an unexpected exception is the server's own
    failure, answered 500 without Retry-After."""
    endpoint = SentBytes()
    registrar = Registrar(config(False), BrokenStorage(BrokenLocation()), endpoint)  # type: ignore[arg-type]
    registrar.on_request(register("alice"), PEER)
    await settle(registrar)
    [answer] = endpoint.take()
    assert (answer.status, answer.reason) == (500, "Server Internal Error")
    assert answer.header("retry-after") is None
