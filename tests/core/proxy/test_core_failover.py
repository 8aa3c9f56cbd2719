"""Off-net calls through the proxy core and its LCR router on the fake clock
(``harness.off_net_shell``): the LCR data in SQLite, two gateways as addresses, the
trunk timeout, Timer C and the gateways' health on the shell's clock. No sockets."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from sipfleet.routing.lcr import PHONE
from sipfleet.routing.lcr_router import LcrRouter
from sipfleet.sip import Request, Response
from sipfleet.storage import Storage
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget
from sipfleet.transport.base import Peer
from tests.core.proxy.harness import (
    PROXY_HOST,
    PROXY_PORT,
    T1,
    RoutedShell,
    make_config,
    off_net_shell,
)
from tests.core.proxy.messages import request, response_to

NUMBER = "4312345"
TRUNK_TIMEOUT_S = 2.0
PROBE_INTERVAL_S = 10.0
GW1, GW2 = ("203.0.113.1", 5060), ("203.0.113.2", 5060)
ROWS = LcrRows(
    (Gateway("gw1", *GW1), Gateway("gw2", *GW2)),
    (GatewayCapability("gw1", PHONE, "01"), GatewayCapability("gw2", PHONE, "05")),
    (Rule(1, "43"),),
    (RuleTarget(1, "gw1", PHONE, priority=1), RuleTarget(1, "gw2", PHONE, priority=2)),
)  # gw1 (prefix 01) first, gw2 (prefix 05) second, for numbers starting 43


def peer(gateway: tuple[str, int]) -> Peer:
    return Peer("udp", *gateway, PROXY_HOST, PROXY_PORT)


async def proxy(storage: Storage, **settings: Any) -> RoutedShell:
    lcr = {
        "lcr_trunk_timeout_s": TRUNK_TIMEOUT_S,
        "lcr_defunct_after": 2,
        "lcr_defunct_s": 30,
        "lcr_probe_interval_s": PROBE_INTERVAL_S,
    }
    config = make_config(**{**lcr, **settings})
    return await off_net_shell(config, storage, ROWS)


def router(shell: RoutedShell) -> LcrRouter:
    found = shell.planner.off_net
    assert isinstance(found, LcrRouter)
    return found


n_calls = itertools.count(1)  # each call its own Call-ID and branch


async def dial(shell: RoutedShell, number: str = NUMBER) -> Request:
    """An INVITE to ``number`` at a foreign domain (off-net), routed; its 100 checked
    and forgotten (what else went upstream is left in ``shell.sent``)."""
    n = next(n_calls)
    uri = f"sip:{number}@pstn.example.net"
    call = request(
        "INVITE",
        uri,
        to=f"<{uri}>",
        call_id=f"call-{n}@test",
        via=f"SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-call-{n}",
    )
    await shell.receive_routed(call)
    (trying, _), *shell.sent = shell.sent
    assert isinstance(trying, Response)
    assert trying.status == 100
    return call


def to(shell: RoutedShell, gateway: tuple[str, int], method: str = "INVITE") -> list[Request]:
    """Requests of ``method`` sent to ``gateway`` (and forgotten)."""
    found, kept = [], []
    for message, destination in shell.sent:
        if (
            isinstance(message, Request)
            and message.method == method
            and (destination.host, destination.port) == gateway
        ):
            found.append(message)
        else:
            kept.append((message, destination))
    shell.sent = kept
    return found


def answer(shell: RoutedShell, gateway: tuple[str, int], sent: Request, status: int) -> None:
    tag = "gw1" if gateway == GW1 else "gw2"
    shell.receive(response_to(sent, status, to_tag=tag), peer(gateway))


def answered(shell: RoutedShell, gateway: tuple[str, int], status: int) -> None:
    """``gateway`` answers its one new INVITE with ``status``; a failure is ACKed."""
    (sent,) = to(shell, gateway)
    answer(shell, gateway, sent, status)
    if status >= 300:
        (ack,) = to(shell, gateway, "ACK")  # hop by hop, by the proxy's client transaction
        assert ack.top_via.branch == sent.top_via.branch


# -- failover ------------------------------------------------------------------------------
async def test_503_from_the_first_gateway_then_200_from_the_second(storage: Storage) -> None:
    shell = await proxy(storage)
    await dial(shell)
    (first,) = to(shell, GW1)
    assert first.uri_text == f"sip:01{NUMBER}@{GW1[0]}:{GW1[1]}"
    assert to(shell, GW2) == []  # one trunk at a time
    answer(shell, GW1, first, 503)
    assert len(to(shell, GW1, "ACK")) == 1
    (second,) = to(shell, GW2)
    assert second.uri_text == f"sip:05{NUMBER}@{GW2[0]}:{GW2[1]}"
    answer(shell, GW2, second, 200)
    (final,) = [m for m, _ in shell.take() if isinstance(m, Response)]
    assert (final.status, final.to.tag) == (200, "gw2")
    assert router(shell).health.failures("gw1") == 1


async def test_a_gateway_that_never_answers_is_left_after_the_trunk_timeout(
    storage: Storage,
) -> None:
    shell = await proxy(storage)
    await dial(shell)
    assert len(to(shell, GW1)) == 1
    shell.advance(TRUNK_TIMEOUT_S - 0.01)
    assert to(shell, GW2) == []
    shell.advance(0.01)
    (second,) = to(shell, GW2)  # gw1's retransmissions are skipped
    answer(shell, GW2, second, 200)
    assert shell.upstream() == [200]
    # gw1 never sent anything: nothing to cancel (§9.1), only retransmissions came
    assert {m.method for m, _ in shell.sent if isinstance(m, Request)} <= {"INVITE"}
    assert to(shell, GW1, "CANCEL") == []


async def test_a_gateway_that_only_says_100_is_cancelled_at_the_trunk_timeout(
    storage: Storage,
) -> None:
    shell = await proxy(storage)
    await dial(shell)
    (first,) = to(shell, GW1)
    answer(shell, GW1, first, 100)
    shell.advance(TRUNK_TIMEOUT_S)
    (cancel,) = to(shell, GW1, "CANCEL")
    # the next trunk at once, not after gw1 has confirmed the CANCEL
    (second,) = to(shell, GW2)
    answer(shell, GW1, cancel, 200)
    answer(shell, GW1, first, 487)
    assert len(to(shell, GW1, "ACK")) == 1
    answer(shell, GW2, second, 200)
    assert shell.upstream() == [200]


async def test_a_busy_first_trunk_ends_the_search(storage: Storage) -> None:
    shell = await proxy(storage)
    await dial(shell)
    answered(shell, GW1, 486)
    assert shell.upstream() == [486]
    shell.advance(64 * T1)
    assert to(shell, GW2) == []
    assert router(shell).health.failures("gw1") == 0


async def test_ringing_goes_up_and_all_failing_gives_the_last_failure(storage: Storage) -> None:
    shell = await proxy(storage)
    await dial(shell)
    (first,) = to(shell, GW1)
    answer(shell, GW1, first, 183)
    assert shell.upstream() == [183]
    answer(shell, GW1, first, 500)
    answered(shell, GW2, 502)
    assert shell.upstream() == [502]


async def test_caller_cancel_stops_the_search(storage: Storage) -> None:
    shell = await proxy(storage)
    call = await dial(shell)
    (first,) = to(shell, GW1)
    answer(shell, GW1, first, 180)
    assert shell.upstream() == [180]
    cancel = request(
        "CANCEL",
        call.uri_text,
        to=call.header("to") or "",
        call_id=call.call_id,
        via=call.header("via") or "",  # the caller's own INVITE branch
    )
    shell.receive(cancel)
    (to_gw1,) = to(shell, GW1, "CANCEL")
    answer(shell, GW1, to_gw1, 200)
    answer(shell, GW1, first, 487)
    received = [m for m, _ in shell.take() if isinstance(m, Response)]
    assert sorted((m.status, m.cseq.method) for m in received) == [
        (200, "CANCEL"),
        (487, "INVITE"),
    ]
    shell.advance(64 * T1)
    assert to(shell, GW2) == []


# -- health --------------------------------------------------------------------------------
class FakeProber:
    """What the router asks of the shell's prober: an OPTIONS to ``uri``, answered by
    calling ``answered(status)``."""

    def __init__(self) -> None:
        self.probes: list[tuple[str, str, Callable[[int], None]]] = []

    def probe(self, key: str, uri: str, answered: Callable[[int], None]) -> None:
        self.probes.append((key, uri, answered))


async def test_a_failing_gateway_is_skipped_probed_and_brought_back(storage: Storage) -> None:
    shell = await proxy(storage)
    lcr = router(shell)
    for _ in range(2):  # lcr_defunct_after = 2
        await dial(shell)
        answered(shell, GW1, 503)
        answered(shell, GW2, 200)
        assert shell.upstream() == [200]
    assert lcr.health.is_defunct("gw1", shell.now)

    await dial(shell)  # straight to gw2
    assert to(shell, GW1) == []
    answered(shell, GW2, 200)
    assert shell.upstream() == [200]

    prober = FakeProber()
    lcr.prober = prober
    shell.advance(PROBE_INTERVAL_S)
    lcr.tick()  # what the router's ticker does every probe interval while defunct
    ((key, uri, probe_answered),) = prober.probes
    assert (key, uri) == ("gw1", f"sip:{GW1[0]}:{GW1[1]}")
    probe_answered(200)
    assert not lcr.health.is_defunct("gw1", shell.now)

    await dial(shell)  # gw1 first again
    answered(shell, GW1, 200)
    assert shell.upstream() == [200]


async def test_every_gateway_defunct_is_503(storage: Storage) -> None:
    shell = await proxy(storage, lcr_defunct_after=1)
    await dial(shell)
    answered(shell, GW1, 500)
    answered(shell, GW2, 500)
    assert shell.upstream() == [500]
    await dial(shell)
    (final,) = [m for m, _ in shell.take() if isinstance(m, Response)]
    assert (final.status, final.reason) == (503, "No Gateway Available")
    assert shell.sent == []


async def test_no_route_is_404(storage: Storage) -> None:
    shell = await proxy(storage)
    await dial(shell, "4912345")
    assert shell.upstream() == [404]
    assert shell.sent == []
