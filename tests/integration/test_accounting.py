"""Call records end to end, on every backend: LB, registrar and two proxies of one pool as
processes, sipp as caller (alice, authenticated) and callee (registered through the LB).
Every call leaves one correct row in ``acc``: answered and hung up by either side, busy,
cancelled, a private call (the real caller kept, the anonymous one shown), and a call
whose proxy is stopped mid-call (the BYE reaches the other proxy, which completes the row).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.sip.privacy import ANONYMOUS_URI
from sipfleet.storage.model import CallRecord
from tests.conftest import new_database
from tests.integration.calls import (
    DOMAIN,
    Callee,
    Caller,
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
from tests.integration.harness import Cluster, running_cluster

pytestmark = pytest.mark.integration

PRIVATE = "Privacy: id"
PLAIN = "Subject: an ordinary call"
BACKENDS = [
    "sqlite",
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    backend = request.param
    dsn = ""
    if backend != "sqlite":
        server = request.getfixturevalue(
            f"{'mariadb' if backend == 'mysql' else 'postgres'}_server"
        )
        dsn = new_database(server, "acc")
    workdir = tmp_path_factory.mktemp(f"acc-{backend}")
    overrides = {"registrar": {"authenticate": False}}
    with running_cluster(workdir, dsn=dsn, overrides=overrides) as cluster:
        start_pool(cluster)
        yield cluster


def records(cluster: Cluster, call_id: str) -> list[CallRecord]:
    found: list[CallRecord] = cluster._with_storage(
        lambda storage: storage.accounting.list(call_id=call_id)
    )
    return found


def the_record(cluster: Cluster, call_id: str, *, closed: bool = True) -> CallRecord:
    """The call's one row, once written (and, with ``closed``, once it has its end)."""

    def written() -> bool:
        found = records(cluster, call_id)
        return (
            len(found) == 1
            and found[0].status is not None
            and (not closed or found[0].end_ms is not None)
        )

    wait_for(written, 10, f"the record of {call_id}")
    (record,) = records(cluster, call_id)
    return record


def call_id_of(one: Caller) -> str:
    invite = next(each for each in trace(one.trace) if each.sent and each.is_request("INVITE"))
    return invite.request.call_id


def contact_of(bob: Callee) -> str:
    invite = next(each for each in received(bob.trace) if each.is_request("INVITE"))
    return invite.request.uri_text


def assert_answered(record: CallRecord, bob: Callee, ended_by: str) -> None:
    assert (record.status, record.reason) == (200, "OK")
    assert record.caller == f"sip:alice@{DOMAIN}"
    assert record.callee == f"sip:{bob.user}@{DOMAIN}"
    assert record.destination == contact_of(bob)
    assert record.gateway is None
    assert record.start_ms is not None
    assert record.answer_ms is not None
    assert record.end_ms is not None
    assert record.start_ms <= record.answer_ms <= record.end_ms
    assert record.duration_ms == record.end_ms - record.answer_ms
    assert record.ended_by == ended_by
    assert record.proxy in ("proxy1", "proxy2")


def test_an_answered_call_the_caller_ends(cluster: Cluster, tmp_path: Path) -> None:
    bob = callee(cluster, tmp_path, "proxy_uas_answer")
    alice = caller(cluster, tmp_path, "proxy_uac_auth_call", bob, PLAIN)
    both_finish(alice, bob)
    record = the_record(cluster, call_id_of(alice))
    assert_answered(record, bob, "caller")
    assert record.caller_shown == record.caller


def test_an_answered_call_the_callee_ends(cluster: Cluster, tmp_path: Path) -> None:
    bob = callee(cluster, tmp_path, "proxy_uas_hangup")
    alice = caller(cluster, tmp_path, "proxy_uac_auth_wait_bye", bob, PLAIN)
    both_finish(alice, bob)
    assert_answered(the_record(cluster, call_id_of(alice)), bob, "callee")


@pytest.mark.parametrize(
    ("callee_scenario", "caller_scenario", "status", "reason"),
    [
        ("proxy_uas_busy", "proxy_uac_auth_refused", 486, "Busy Here"),
        ("proxy_uas_ring_cancel", "proxy_uac_auth_cancel", 487, "Request Terminated"),
    ],
    ids=["busy", "cancelled"],
)
def test_a_failed_call(
    cluster: Cluster,
    tmp_path: Path,
    callee_scenario: str,
    caller_scenario: str,
    status: int,
    reason: str,
) -> None:
    bob = callee(cluster, tmp_path, callee_scenario)
    alice = caller(cluster, tmp_path, caller_scenario, bob, PLAIN)
    both_finish(alice, bob)
    record = the_record(cluster, call_id_of(alice))
    assert (record.status, record.reason) == (status, reason)
    assert record.answer_ms is None
    assert record.duration_ms == 0
    assert record.start_ms is not None
    assert record.end_ms is not None
    assert record.start_ms <= record.end_ms
    assert record.ended_by is None
    assert record.callee == f"sip:{bob.user}@{DOMAIN}"


def test_a_private_call_whose_proxy_dies_mid_call(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The proxy that answered the INVITE dies (SIGKILL, by PID); the re-INVITEs and the
    BYE go through the other one, which completes the row the first one wrote."""
    bob = callee(cluster, tmp_path, "privacy_uas_failover")
    alice = caller(cluster, tmp_path, "privacy_uac_failover", bob, PRIVATE)
    wait_for(lambda: any(each.is_request("ACK") for each in received(bob.trace)), 10, "set up")
    call_id = call_id_of(alice)
    opened = the_record(cluster, call_id, closed=False)
    assert opened.end_ms is None
    assert opened.ended_by is None
    handled = cluster.roles[opened.proxy or ""]
    cluster.stop_role(handled, signal.SIGKILL)  # it dies: nothing written on the way out
    wait_for(lambda: health(cluster, capsys).get(uri(handled)) == "down", 10, "proxy down")
    go(alice.port, call_id)
    both_finish(alice, bob)

    record = the_record(cluster, call_id)
    assert_answered(record, bob, "caller")
    assert record.proxy == opened.proxy  # the row the stopped proxy wrote, completed
    assert record.caller == f"sip:alice@{DOMAIN}"  # the real caller, for the bill
    assert record.caller_shown == ANONYMOUS_URI  # what the callee saw

    port = handled.port  # the stopped proxy back, for the next tests
    name = next(name for name, node in cluster.roles.items() if node is handled)
    cluster.start("proxy", name=f"{name}-again", proxy=pool_proxy(port))
    wait_for(lambda: health(cluster, capsys).get(uri(handled)) == "up", 10, "proxy up again")
