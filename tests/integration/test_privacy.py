"""Caller privacy end to end (DESIGN §4): LB, registrar and two proxies of one pool as
processes, sipp as caller (alice, authenticated, "Privacy: id" and a P-Asserted-Identity)
and callee (registered through the LB). What each side saw is read from its own sipp
message trace (-trace_msg), message by message.

The proxies accept each other's Record-Route (each follows the LB's proxy pool) and hide the Contact
user too (``privacy_hide_contact_user``), so a private caller's name appears nowhere in
what the callee receives."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.sip import Request
from tests.integration.calls import (
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
    requests_of,
    responses,
    start_pool,
    trace,
    uri,
    wait_for,
)
from tests.integration.harness import Cluster, running_cluster

pytestmark = pytest.mark.integration

PRIVATE = "Privacy: id"
PLAIN = "Subject: an ordinary call"  # the same scenario, no privacy asked


# -- the cluster ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    overrides = {"registrar": {"authenticate": False}}
    workdir = tmp_path_factory.mktemp("privacy-cluster")
    with running_cluster(workdir, overrides=overrides) as cluster:
        start_pool(cluster, privacy_hide_contact_user=True)
        yield cluster


def callers_from(one: Caller) -> str:
    """The From line of alice's INVITE as it left her phone."""
    invite = next(each for each in trace(one.trace) if each.sent and each.is_request("INVITE"))
    from_line = invite.line("From")
    assert "alice" in from_line
    return from_line


def assert_callee_saw_nobody(seen: list[Seen]) -> None:
    """The callee got nothing that names alice: From, P-Asserted-Identity, Contact, SDP."""
    for each in seen:
        assert "alice" not in each.text.lower(), each.text


def assert_caller_saw_itself(seen: list[Seen], from_line: str) -> None:
    """Every response alice got carries her own From, byte for byte."""
    assert responses(seen), "no response at all"
    for each in responses(seen):
        assert each.line("From") == from_line, each.text


# -- tests ---------------------------------------------------------------------------------------
def test_private_dialog_continues_after_its_proxy_stops(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bob = callee(cluster, tmp_path, "privacy_uas_failover")
    alice = caller(cluster, tmp_path, "privacy_uac_failover", bob, PRIVATE)

    def acked() -> bool:
        return any(each.is_request("ACK") for each in received(bob.trace))

    wait_for(acked, 10, "the call set up")
    invite = next(each for each in received(bob.trace) if each.is_request("INVITE"))
    ours = [rr for rr in invite.request.header_values("record-route") if ";pv=" in rr]
    assert len(ours) == 1, invite.text
    found = re.search(r"<sip:127\.0\.0\.1:(\d+);lr;[^>]*pv=", ours[0])
    assert found is not None
    port = int(found.group(1))  # the proxy that handled the INVITE
    name, handled = next((name, node) for name, node in cluster.roles.items() if node.port == port)
    cluster.stop_role(handled)  # by PID
    assert handled.process is not None
    assert handled.process.poll() is not None
    wait_for(lambda: health(cluster, capsys).get(uri(handled)) == "down", 10, "proxy down")
    go(alice.port, invite.request.call_id)
    both_finish(alice, bob)

    callee_saw = received(bob.trace)
    assert requests_of(callee_saw) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"]
    assert_callee_saw_nobody(callee_saw)
    for each in callee_saw:
        if isinstance(each.message, Request):  # every request of alice's: anonymous
            assert each.is_anonymous("From"), each.text
            assert not each.lines("P-Asserted-Identity")
        else:  # alice's answer to bob's re-INVITE
            assert each.is_anonymous("To"), each.text
            if each.status == 200:
                assert each.value("Contact").startswith("<sip:anonymous@127.0.0.1:")

    from_line = callers_from(alice)
    caller_saw = received(alice.trace)
    assert_caller_saw_itself(caller_saw, from_line)
    statuses = [each.status for each in responses(caller_saw)]
    assert {100, 180, 200, 407} <= set(statuses)
    reinvite = next(each for each in caller_saw if each.is_request("INVITE"))  # from bob
    assert reinvite.line("To") == from_line.replace("From:", "To:", 1)
    assert reinvite.request.uri_text == f"sip:alice@127.0.0.1:{alice.port}"
    ack = next(each for each in caller_saw if each.is_request("ACK"))
    assert ack.line("To") == from_line.replace("From:", "To:", 1)

    # the stopped proxy back, for the other tests (same port, same settings)
    cluster.start(
        "proxy", name=f"{name}-again", proxy=pool_proxy(port, privacy_hide_contact_user=True)
    )
    wait_for(lambda: health(cluster, capsys).get(uri(handled)) == "up", 10, "proxy up again")


def test_callee_hangs_up_the_caller_gets_its_own_identity_in_to(
    cluster: Cluster, tmp_path: Path
) -> None:
    bob = callee(cluster, tmp_path, "proxy_uas_hangup")
    alice = caller(cluster, tmp_path, "privacy_uac_wait_bye", bob, PRIVATE)
    both_finish(alice, bob)

    callee_saw = received(bob.trace)
    assert_callee_saw_nobody(callee_saw)
    assert callee_saw[0].is_anonymous("From")
    ok = responses(callee_saw)[-1]  # alice's 200 to the BYE
    assert ok.is_anonymous("To")

    from_line = callers_from(alice)
    caller_saw = received(alice.trace)
    assert_caller_saw_itself(caller_saw, from_line)
    bye = next(each for each in caller_saw if each.is_request("BYE"))
    assert bye.line("To") == from_line.replace("From:", "To:", 1)
    assert bye.request.uri_text == f"sip:alice@127.0.0.1:{alice.port}"


def test_caller_cancels_the_callee_sees_only_anonymous(cluster: Cluster, tmp_path: Path) -> None:
    bob = callee(cluster, tmp_path, "proxy_uas_ring_cancel")
    alice = caller(cluster, tmp_path, "privacy_uac_cancel", bob, PRIVATE)
    both_finish(alice, bob)

    callee_saw = received(bob.trace)
    assert requests_of(callee_saw) == ["INVITE", "CANCEL", "ACK"]
    assert_callee_saw_nobody(callee_saw)
    for each in callee_saw:
        assert each.is_anonymous("From"), each.text

    caller_saw = received(alice.trace)
    assert_caller_saw_itself(caller_saw, callers_from(alice))
    statuses = [each.status for each in responses(caller_saw)]
    assert 487 in statuses
    assert 180 in statuses


def test_a_caller_without_privacy_is_untouched(cluster: Cluster, tmp_path: Path) -> None:
    bob = callee(cluster, tmp_path, "proxy_uas_hangup")
    alice = caller(cluster, tmp_path, "privacy_uac_wait_bye", bob, PLAIN)
    both_finish(alice, bob)

    sent = [each for each in trace(alice.trace) if each.sent and each.is_request("INVITE")][-1]
    invite = received(bob.trace)[0]
    for name in ("From", "To", "P-Asserted-Identity", "Contact"):
        assert invite.line(name) == sent.line(name)
    assert not any(";pv=" in rr for rr in invite.request.header_values("record-route"))

    caller_saw = received(alice.trace)
    assert_caller_saw_itself(caller_saw, sent.line("From"))
    bob_sent = next(each for each in trace(bob.trace) if each.sent and each.is_request("BYE"))
    bye = next(each for each in caller_saw if each.is_request("BYE"))
    for name in ("From", "To", "Contact"):
        assert bye.line(name) == bob_sent.line(name)
    assert bye.request.uri_text == bob_sent.request.uri_text
