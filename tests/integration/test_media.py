"""The media relay end to end: LB, registrar and two proxies of one pool as processes, a
real rtpengine on loopback, sipp as caller and callee. The proxies relay every call
(``[media] mode = "always"``: on loopback nothing looks NATed; the NAT case, with real
phones behind real NATs, is tests/interop/test_media_relay.py).

What each side was offered is read from its sipp trace: every SDP that crossed the proxy
names the relay's ports, never the other side's own. What the relay holds is asked of
rtpengine itself (ng ``query``): the call is there while it lasts and gone once it ended,
however it ended and whichever proxy saw the end.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.media import MediaRelayError, MediaRelays
from tests.integration.calls import (
    Callee,
    Caller,
    Seen,
    both_finish,
    callee,
    caller,
    go,
    health,
    no_sipp_left,  # noqa: F401 (autouse: stops the sipps a failed test left)
    pool_proxy,
    received,
    start_pool,
    trace,
    uri,
    wait_for,
)
from tests.integration.harness import Cluster, free_port, running_cluster
from tests.rtpengine import Rtpengine, running_rtpengine, why_no_rtpengine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(why_no_rtpengine() is not None, reason=str(why_no_rtpengine())),
]

PLAIN = "Subject: a relayed call"
PORT_MIN, PORT_MAX = 37000, 37199
_M_LINE = re.compile(r"^m=audio (\d+) ", re.M)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rtpengine]:
    workdir = tmp_path_factory.mktemp("relay")
    with running_rtpengine(
        workdir, ng_port=free_port(), port_min=PORT_MIN, port_max=PORT_MAX
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, relay: Rtpengine) -> Iterator[Cluster]:
    overrides = {
        "registrar": {"authenticate": False},
        "media": {"mode": "always", "relays": [f"udp:{relay.ng_address}"]},
    }
    workdir = tmp_path_factory.mktemp("media-cluster")
    with running_cluster(workdir, overrides=overrides) as cluster:
        start_pool(cluster)
        yield cluster


# -- what the sides saw and what the relay holds ---------------------------------------------------
def media_port(seen: Seen) -> int:
    found = _M_LINE.search(seen.text)
    assert found is not None, seen.text
    return int(found.group(1))


def relayed(seen: Seen) -> bool:
    """The SDP names the relay: its address and one of its ports."""
    return "c=IN IP4 127.0.0.1" in seen.text and PORT_MIN <= media_port(seen) <= PORT_MAX


def with_sdp(seen: list[Seen]) -> list[Seen]:
    return [each for each in seen if "application/sdp" in each.text.lower()]


def call_id_of(one: Caller) -> str:
    invite = next(each for each in trace(one.trace) if each.sent and each.is_request("INVITE"))
    return invite.request.call_id


def relay_knows(relay: Rtpengine, call_id: str) -> bool:
    """rtpengine's answer to ``query``: the call, or "Unknown call-id"."""

    async def ask() -> str:
        relays = MediaRelays([f"udp:{relay.ng_address}"])
        await relays.start()
        try:
            (address,) = relays.relays
            await relays.query(address, call_id=call_id)
            return ""
        except MediaRelayError as exc:
            return str(exc)
        finally:
            await relays.close()

    refusal = asyncio.run(ask())
    assert refusal in ("", f"media relay {relay.ng_address}: query failed: Unknown call-id")
    return not refusal


def assert_relay_let_go(relay: Rtpengine, call_id: str) -> None:
    wait_for(lambda: not relay_knows(relay, call_id), 5, f"the relay deleted {call_id}")


# -- tests ---------------------------------------------------------------------------------------
def test_offer_and_answer_go_through_the_relay_and_the_bye_ends_it(
    cluster: Cluster, relay: Rtpengine, tmp_path: Path
) -> None:
    bob = callee(cluster, tmp_path, "media_uas_early")
    alice = caller(cluster, tmp_path, "proxy_uac_auth_call", bob, PLAIN)
    both_finish(alice, bob)
    (offer,) = with_sdp([each for each in received(bob.trace) if each.is_request("INVITE")])
    assert relayed(offer)
    answers = with_sdp(received(alice.trace))
    assert sorted({each.status for each in answers}) == [183, 200]  # early media too
    assert all(relayed(each) for each in answers)
    assert_relay_let_go(relay, call_id_of(alice))


def test_a_late_offer_is_relayed_in_the_200_and_the_ack(
    cluster: Cluster, relay: Rtpengine, tmp_path: Path
) -> None:
    bob = callee(cluster, tmp_path, "proxy_uas_answer")
    alice = caller(cluster, tmp_path, "media_uac_late_offer", bob, PLAIN)
    both_finish(alice, bob)
    (offer,) = with_sdp(received(alice.trace))
    assert offer.status == 200
    assert relayed(offer)
    (answer,) = with_sdp(received(bob.trace))
    assert answer.is_request("ACK")
    assert relayed(answer)
    assert_relay_let_go(relay, call_id_of(alice))


@pytest.mark.parametrize(
    ("callee_scenario", "caller_scenario"),
    [
        ("proxy_uas_busy", "proxy_uac_auth_refused"),
        ("proxy_uas_ring_cancel", "proxy_uac_auth_cancel"),
    ],
    ids=["busy", "cancelled"],
)
def test_a_call_that_fails_ends_at_the_relay(
    cluster: Cluster, relay: Rtpengine, tmp_path: Path, callee_scenario: str, caller_scenario: str
) -> None:
    bob = callee(cluster, tmp_path, callee_scenario)
    alice = caller(cluster, tmp_path, caller_scenario, bob, PLAIN)
    both_finish(alice, bob)
    (offer,) = with_sdp([each for each in received(bob.trace) if each.is_request("INVITE")])
    assert relayed(offer)  # the call was at the relay
    assert_relay_let_go(relay, call_id_of(alice))


def test_a_dialog_whose_proxy_stops_keeps_its_relay(
    cluster: Cluster, relay: Rtpengine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The proxy of the INVITE is stopped (by PID); both re-INVITEs and the BYE go through
    the other proxy, which finds the relay by our Record-Route alone."""
    bob: Callee = callee(cluster, tmp_path, "privacy_uas_failover")
    alice = caller(cluster, tmp_path, "privacy_uac_failover", bob, PLAIN)
    wait_for(lambda: any(each.is_request("ACK") for each in received(bob.trace)), 10, "set up")
    call_id = call_id_of(alice)
    assert relay_knows(relay, call_id)
    invite = next(each for each in received(bob.trace) if each.is_request("INVITE"))
    ours = [rr for rr in invite.request.header_values("record-route") if ";mr=" in rr]
    assert len(ours) == 1, invite.text
    found = re.search(r"<sip:127\.0\.0\.1:(\d+);", ours[0])
    assert found is not None
    port = int(found.group(1))
    name, handled = next((n, node) for n, node in cluster.roles.items() if node.port == port)
    cluster.stop_role(handled)
    wait_for(lambda: health(cluster, capsys).get(uri(handled)) == "down", 10, "proxy down")
    go(alice.port, call_id)
    both_finish(alice, bob)

    later = with_sdp(received(bob.trace))[1:]  # past the first INVITE: the sibling's work
    assert later, "no SDP after the failover"
    assert all(relayed(each) for each in later)
    assert all(relayed(each) for each in with_sdp(received(alice.trace)))
    assert_relay_let_go(relay, call_id)

    cluster.start("proxy", name=f"{name}-again", proxy=pool_proxy(port))
    wait_for(lambda: health(cluster, capsys).get(uri(handled)) == "up", 10, "proxy up again")
