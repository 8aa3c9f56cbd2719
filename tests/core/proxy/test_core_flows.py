"""A phone registered over two flows, through two LBs (RFC 5626 §5.3), called through the
proxy core with the real routing (``harness.RoutedShell``): SQLite, the fake shell and
its fake clock, no sockets. The LBs are addresses; what they would receive is what the
core sends to them."""

from __future__ import annotations

import time

from sipfleet.core.proxy.targets import Target, plan_for_bindings
from sipfleet.sip import Request
from sipfleet.storage import Aor, BindingUpdate, Storage
from sipfleet.storage.model import Binding
from sipfleet.transport.base import Peer
from tests.core.proxy.harness import (
    DOMAIN,
    PROXY_HOST,
    PROXY_PORT,
    RoutedShell,
    bind,
    make_config,
)
from tests.core.proxy.messages import request, response_to

INSTANCE = '"<urn:uuid:00000000-0000-4000-8000-0000000000b1>"'
LB1, LB2 = ("10.0.0.11", 5060), ("10.0.0.12", 5060)
# over TCP each flow is a connection of its own, so each has its own Contact port
CONTACTS = {
    1: "sip:bob@192.168.1.20:40001;transport=tcp",
    2: "sip:bob@192.168.1.20:40002;transport=tcp",
}
FLOW_TIMEOUT = 2.0


def lb_peer(lb: tuple[str, int]) -> Peer:
    return Peer("udp", *lb, PROXY_HOST, PROXY_PORT)


async def bind_flows(storage: Storage, *, newest: tuple[str, int] = LB2) -> None:
    """bob's phone over two flows, reg-id 1 through LB1 and 2 through LB2, ``newest``
    registered ten seconds after the other."""
    now = int(time.time())
    older = LB1 if newest == LB2 else LB2
    for lb, at in ((older, now - 10), (newest, now)):
        reg_id = 1 if lb == LB1 else 2
        update = BindingUpdate(
            CONTACTS[reg_id],
            at + 600,
            f"reg-{reg_id}",
            1,
            path=f"<sip:flow{reg_id}@{lb[0]}:{lb[1]};lr;ob>",
            instance=INSTANCE,
            reg_id=reg_id,
        )
        await storage.location.save(Aor("bob", DOMAIN), [update], now=at, max_contacts=10)


async def call_bob(shell: RoutedShell, method: str = "INVITE") -> None:
    await shell.receive_routed(request(method, f"sip:bob@{DOMAIN}"))
    if method == "INVITE":
        assert shell.upstream() == [100]


async def over_the_newest_flow(
    storage: Storage, method: str = "INVITE"
) -> tuple[RoutedShell, Request]:
    """A proxy, bob's two flows (LB2's the newest), and ``method`` for bob: the copy sent
    over LB2's flow (the only one sent)."""
    shell = proxy(storage)
    await bind_flows(storage)
    await call_bob(shell, method)
    ((first, to),) = sent(shell, method)
    assert to == LB2
    return shell, first


def sent(shell: RoutedShell, method: str = "INVITE") -> list[tuple[Request, tuple[str, int]]]:
    """Requests of ``method`` sent (and forgotten), each with the LB it went to."""
    found, kept = [], []
    for message, destination in shell.sent:
        if isinstance(message, Request) and message.method == method:
            found.append((message, (destination.host, destination.port)))
        else:
            kept.append((message, destination))
    shell.sent = kept
    return found


def proxy(storage: Storage) -> RoutedShell:
    return RoutedShell(make_config(flow_timeout_s=FLOW_TIMEOUT), storage)


async def test_a_phone_with_two_flows_is_called_once_over_its_newest_flow(
    storage: Storage,
) -> None:
    shell = proxy(storage)
    await bind_flows(storage, newest=LB1)
    await bind(storage, "bob", "sip:bob@203.0.113.9:5060")  # a second device, no instance
    await call_bob(shell)
    forks = sent(shell)
    assert sorted(to for _, to in forks) == sorted([LB1, ("203.0.113.9", 5060)])
    (over_flow,) = [copy for copy, to in forks if to == LB1]
    assert over_flow.header_lines("route") == [f"<sip:flow1@{LB1[0]}:{LB1[1]};lr;ob>"]


async def test_430_flow_failed_sends_the_call_over_the_other_flow(storage: Storage) -> None:
    shell, first = await over_the_newest_flow(storage)
    shell.receive(response_to(first, 430, to_tag=""), lb_peer(LB2))
    ((second, to),) = sent(shell)
    assert to == LB1
    assert second.call_id == first.call_id
    assert second.top_via.branch != first.top_via.branch  # a new branch
    shell.receive(response_to(second, 180), lb_peer(LB1))
    shell.receive(response_to(second, 200), lb_peer(LB1))
    assert shell.upstream() == [180, 200]  # the caller never hears of the 430


async def test_a_flow_that_says_nothing_is_given_up_after_the_flow_timeout(
    storage: Storage,
) -> None:
    """The newest flow's LB is dead: nothing comes back, not even a 100; after
    ``proxy.flow_timeout_s`` (not Timer B's 32 s) the other flow gets the call."""
    shell, first = await over_the_newest_flow(storage)
    shell.advance(FLOW_TIMEOUT - 0.1)
    assert [to for _, to in sent(shell)] == [LB2, LB2]  # retransmissions at T1, 3*T1
    shell.advance(0.1)
    ((second, to),) = sent(shell)
    assert to == LB1
    shell.receive(response_to(second, 200), lb_peer(LB1))
    assert shell.upstream() == [200]
    shell.receive(response_to(first, 180, to_tag="late"), lb_peer(LB2))  # it wakes up
    ((cancel, to),) = sent(shell, "CANCEL")
    assert (to, cancel.top_via.branch) == (LB2, first.top_via.branch)


async def test_a_flow_that_answers_keeps_the_call_past_the_flow_timeout(
    storage: Storage,
) -> None:
    shell, first = await over_the_newest_flow(storage)
    shell.receive(response_to(first, 100, to_tag=""), lb_peer(LB2))
    shell.advance(10 * FLOW_TIMEOUT)
    assert sent(shell) == []  # no retransmission after a 100, no other flow
    shell.receive(response_to(first, 180), lb_peer(LB2))
    assert shell.upstream() == [180]


async def test_every_flow_failed_is_480_not_430(storage: Storage) -> None:
    shell = proxy(storage)
    await bind_flows(storage)
    await call_bob(shell)
    for lb in (LB2, LB1):
        ((copy, to),) = sent(shell)
        assert to == lb
        shell.receive(response_to(copy, 430, to_tag=""), lb_peer(lb))
    assert shell.upstream() == [480]


async def test_a_message_over_a_failed_flow_goes_over_the_other(storage: Storage) -> None:
    shell, first = await over_the_newest_flow(storage, "MESSAGE")
    shell.receive(response_to(first, 430, to_tag=""), lb_peer(LB2))
    ((second, to),) = sent(shell, "MESSAGE")
    assert to == LB1
    shell.receive(response_to(second, 200), lb_peer(LB1))
    assert shell.upstream() == [200]


async def test_a_message_over_a_silent_flow_goes_over_the_other_in_time(
    storage: Storage,
) -> None:
    """Timer F would take 32 s, as long as the caller waits: the flow timer does not."""
    shell, first = await over_the_newest_flow(storage, "MESSAGE")
    shell.advance(FLOW_TIMEOUT)
    *resent, (second, to) = sent(shell, "MESSAGE")
    assert [copy.top_via.branch for copy, _ in resent] == [first.top_via.branch] * len(resent)
    assert to == LB1
    assert second.top_via.branch != first.top_via.branch
    shell.receive(response_to(second, 200), lb_peer(LB1))
    assert shell.upstream() == [200]


async def test_a_message_answered_over_its_flow_goes_nowhere_else(storage: Storage) -> None:
    shell, first = await over_the_newest_flow(storage, "MESSAGE")
    shell.receive(response_to(first, 202), lb_peer(LB2))
    shell.advance(10 * FLOW_TIMEOUT)
    assert sent(shell, "MESSAGE") == []
    assert shell.upstream() == [202]


def binding(n: int, *, instance: str | None, reg_id: int | None, at: int) -> Binding:
    return Binding(
        n, f"ruid-{n}", "bob", DOMAIN, f"sip:bob@10.1.0.{n}", None, f"<sip:lb{n};lr>",
        at + 600, None, "c", 1, at, 0, 0, None, None, None, instance, reg_id, None,
    )  # fmt: skip


def test_flows_of_one_instance_are_one_target_newest_first_others_separate() -> None:
    rows = [
        binding(1, instance=INSTANCE, reg_id=1, at=100),
        binding(2, instance=None, reg_id=None, at=100),
        binding(3, instance=INSTANCE, reg_id=2, at=105),
        binding(4, instance=INSTANCE, reg_id=3, at=105),  # the same second: the later row
        binding(5, instance='"<urn:uuid:other>"', reg_id=None, at=100),  # no reg-id: no flow
    ]
    ((phone, device, other),) = plan_for_bindings(rows, serial=False).groups
    assert [phone.uri, *(t.uri for t in phone.alternates)] == [
        "sip:bob@10.1.0.4",
        "sip:bob@10.1.0.3",
        "sip:bob@10.1.0.1",
    ]
    assert phone.next_flow() == Target(
        "sip:bob@10.1.0.3", ("<sip:lb3;lr>",), alternates=(phone.alternates[1],)
    )
    assert (device.uri, device.alternates, other.uri) == (
        "sip:bob@10.1.0.2",
        (),
        "sip:bob@10.1.0.5",
    )
