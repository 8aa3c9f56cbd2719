"""Two sites on a three-node MariaDB Galera cluster (multi-primary; tests/galera.py).

Each site is a registrar and a proxy (`sipfleet run`) whose ``database.write`` is the
site's own Galera node: site 1 on node 1, site 2 on node 2 (node 3 only votes and holds a
copy). Phones are scripted UAs (harness.RawUa) that register at one site and are called
through the other. In order:

1. a phone registered at either site is called from the other one;
2. two sites saving the same AORs at once: Galera aborts one of two conflicting
   transactions at commit (certification); sipfleet retries it, counts it, and loses no
   acknowledged save;
3. node 1 is cut off from the others (its link down): it leaves the primary component and
   refuses every statement; site 1 answers 503 with Retry-After, site 2 registers; when
   the link is back node 1 catches up by itself;
4. node 1 is killed (SIGKILL): site 2 keeps registering, site 1's registrar and proxy
   answer at once with 503 and Retry-After (not silence); node 1 rejoins by
   IST with every binding written while it was down, and site 1 registers again.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sipfleet.sip import Response
from sipfleet.storage import Aor, BindingUpdate, Storage, StorageUnavailable, open_storage
from sipfleet.storage.timing import STATEMENTS
from tests.galera import DB_NAME, Galera, GaleraNode, galera_cluster, ist_received, why_no_galera
from tests.integration.harness import Cluster, RawUa, RoleProcess, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.mysql, pytest.mark.netns, pytest.mark.slow]

DOMAIN = "example.com"
NO_AUTH = {"registrar": {"authenticate": False}, "proxy": {"authenticate": False}}


@dataclass
class Site:
    registrar: RoleProcess
    proxy: RoleProcess


@dataclass
class Sites:
    galera: Galera
    cluster: Cluster
    one: Site  # on node 1
    two: Site  # on node 2


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    why = why_no_galera()
    if why is not None:
        pytest.skip(why)
    workdir = tmp_path_factory.mktemp("galera")
    with galera_cluster() as galera:
        node1, node2 = galera.nodes[0], galera.nodes[1]
        with running_cluster(workdir, dsn=node1.dsn(), overrides=NO_AUTH) as cluster:
            galera.wait_synced()  # the schema is on every node
            one, two = (
                Site(
                    cluster.start("registrar", f"reg{n}", database={"write": node.dsn()}),
                    cluster.start("proxy", f"px{n}", database={"write": node.dsn()}),
                )
                for n, node in ((1, node1), (2, node2))
            )
            yield Sites(galera, cluster, one, two)


def register(registrar: RoleProcess, user: str) -> tuple[RawUa, Response]:
    """A phone registering ``user`` at ``registrar``: the phone and the final response."""
    phone = RawUa(("127.0.0.1", registrar.port))
    phone.request("REGISTER", f"sip:{DOMAIN}", user=user, expires=600)
    return phone, phone.final_response(5.0)


def rings_when_called(phone: RawUa, user: str, proxy: RoleProcess) -> None:
    """A caller sends INVITE for ``user`` to ``proxy``: the phone gets it and answers
    486 (busy: no dialog to tear down), which the caller receives."""
    caller = RawUa(("127.0.0.1", proxy.port))
    try:
        caller.request("INVITE", f"sip:{user}@{DOMAIN}", user="caller")
        invite = phone.expect_request("INVITE")
        phone.lb = ("127.0.0.1", proxy.port)  # it answers where the INVITE came from
        phone.answer(invite, 486)
        caller.expect_response(486)
    finally:
        caller.close()


def test_a_phone_registered_at_one_site_is_called_from_the_other(sites: Sites) -> None:
    for user, here, there in (("alice", sites.one, sites.two), ("bob", sites.two, sites.one)):
        phone, response = register(here.registrar, user)
        try:
            assert response.status == 200, f"{response.status} {response.reason}"
            sites.galera.settle()  # the other site's node has applied it (docs/operations.md)
            rings_when_called(phone, user, there.proxy)
        finally:
            phone.close()


OUTAGE_PHONES = 10  # bindings written while a node is away


# -- certification conflicts -----------------------------------------------------------------
HOT_AORS = 4  # few AORs, saved from both nodes at once: conflicts are all but certain
SAVES_PER_SITE = 240
WORKERS_PER_SITE = 8
NOW = int(time.time())


def outbound_update(k: int, cseq: int) -> BindingUpdate:
    """An RFC 5626 phone's binding (instance and reg-id): saved in one explicit
    transaction, which Galera certifies at COMMIT (not retried by the server)."""
    return BindingUpdate(
        f"sip:hot{k}@198.51.100.7:5060;ob", NOW + 3600, f"call-hot{k}", cseq,
        instance=f"<urn:uuid:00000000-0000-0000-0000-00000000000{k}>", reg_id=1,
    )  # fmt: skip


@dataclass
class Tally:
    acked: dict[int, int]  # AOR -> the highest CSeq a save acknowledged
    failed: dict[int, set[int]]  # AOR -> CSeqs whose save failed (StorageUnavailable)


async def save_from_both_nodes(storages: list[Storage]) -> Tally:
    cseqs = itertools.count(1)  # one sequence for both sites: every save is the newest
    tally = Tally({}, {})

    async def worker(storage: Storage, turns: Iterator[int]) -> None:
        for turn in turns:
            k, cseq = turn % HOT_AORS, next(cseqs)
            aor = Aor(f"hot{k}", DOMAIN)
            try:
                await storage.location.save(
                    aor, [outbound_update(k, cseq)], now=NOW, max_contacts=5
                )
            except StorageUnavailable:
                tally.failed.setdefault(k, set()).add(cseq)
                continue
            tally.acked[k] = max(tally.acked.get(k, 0), cseq)

    site_turns = [iter(range(SAVES_PER_SITE)) for _ in storages]
    async with asyncio.timeout(60):
        await asyncio.gather(
            *(
                worker(storage, turns)
                for storage, turns in zip(storages, site_turns, strict=True)
                for _ in range(WORKERS_PER_SITE)
            )
        )
    return tally


def errors(error: str) -> int:
    return STATEMENTS.errors.get(("location.save", error), 0)


def test_conflicting_saves_on_two_nodes_are_retried_and_none_is_lost(sites: Sites) -> None:
    nodes = sites.galera.nodes
    conflicts, unavailable = errors("conflict"), errors("unavailable")

    async def run() -> Tally:
        storages = [open_storage(node.dsn(), pool_size=WORKERS_PER_SITE) for node in nodes[:2]]
        try:
            return await save_from_both_nodes(storages)
        finally:
            for storage in storages:
                await storage.close()

    tally = asyncio.run(run())
    conflicts, unavailable = errors("conflict") - conflicts, errors("unavailable") - unavailable
    failed = sum(len(cseqs) for cseqs in tally.failed.values())
    print(f"{2 * SAVES_PER_SITE} saves: {conflicts} conflicts retried, {failed} failed")
    assert conflicts > 0  # Galera did abort saves (or this test proves nothing)
    assert unavailable == failed  # a save that failed is counted (and answered 503)
    assert failed < conflicts
    query = "SELECT username, cseq FROM location WHERE username LIKE 'hot%' ORDER BY username"
    stored = [
        dict((user, int(cseq)) for user, cseq in (line.split("\t") for line in text.splitlines()))
        for text in sites.galera.sql_everywhere(query)
    ]
    assert stored[0] == stored[1] == stored[2]  # every node holds the same rows
    for k, cseq in tally.acked.items():
        # The newest acknowledged save is stored, or a newer one that failed on its way
        # back (a time limit, never a conflict: a conflict is rolled back).
        assert stored[0][f"hot{k}"] == cseq or stored[0][f"hot{k}"] in tally.failed.get(k, ())


# -- a node cut off, a node killed --------------------------------------------------------------
def refused_at_once(registrar: RoleProcess, user: str) -> None:
    """A REGISTER at a site whose node cannot write: 503 with Retry-After, at once (what
    sends an RFC 3263 client on to the other site)."""
    started = time.monotonic()
    phone, response = register(registrar, user)
    phone.close()
    assert time.monotonic() - started < 1.0  # refused at once, not a timeout
    assert_unavailable(response)


def call_refused_at_once(proxy: RoleProcess, user: str) -> None:
    """A call through a proxy whose node cannot be read: 503 with Retry-After, at once."""
    caller = RawUa(("127.0.0.1", proxy.port))
    try:
        started = time.monotonic()
        caller.request("INVITE", f"sip:{user}@{DOMAIN}", user="caller")
        response = caller.expect_response(503)
        assert time.monotonic() - started < 1.0
        assert_unavailable(response)
    finally:
        caller.close()


def assert_unavailable(response: Response) -> None:
    """Registrar and proxy answer an unavailable database alike."""
    assert (response.status, response.reason) == (503, "Service Unavailable")
    assert response.header("retry-after") is not None


def registered(registrar: RoleProcess, users: list[str]) -> None:
    for user in users:
        phone, response = register(registrar, user)
        phone.close()
        assert response.status == 200, f"{user}: {response.status} {response.reason}"


def on_node(node: GaleraNode, users: list[str]) -> list[str]:
    """Which of ``users`` have a binding on ``node`` (after all it has been sent)."""
    names = "', '".join(users)
    found = node.server.sql(
        "SET SESSION wsrep_sync_wait = 1; "
        f"SELECT username FROM location WHERE username IN ('{names}')",
        DB_NAME,
    )
    return sorted(found.split())


def test_a_node_cut_off_refuses_its_site_and_catches_up_when_back(sites: Sites) -> None:
    galera, node1 = sites.galera, sites.galera.nodes[0]
    galera.cut(node1)
    try:
        galera.wait_synced(galera.nodes[1:])  # nodes 2 and 3 go on (about 2 s)
        # node 1 sees its side of the partition a moment after the others do
        deadline = time.monotonic() + 15
        while (state := node1.status("wsrep_cluster_status")) != "non-Primary":
            assert time.monotonic() < deadline, f"node 1 still {state} after 15 s"
            time.sleep(0.1)
        refused_at_once(sites.one.registrar, "erin")
        written = [f"cut{i}-{secrets.token_hex(2)}" for i in range(OUTAGE_PHONES)]
        registered(sites.two.registrar, written)
    finally:
        galera.reconnect(node1)
    galera.wait_synced()
    assert on_node(node1, written) == sorted(written)
    registered(sites.one.registrar, ["erin"])


def test_a_killed_node_refuses_its_site_at_once_and_rejoins_with_everything(sites: Sites) -> None:
    galera, node1 = sites.galera, sites.galera.nodes[0]
    node1.kill()
    galera.wait_synced()  # nodes 2 and 3 form the primary component (about 2 s)

    refused_at_once(sites.one.registrar, "carol")
    call_refused_at_once(sites.one.proxy, "bob")
    written = [f"outage{i}-{secrets.token_hex(2)}" for i in range(OUTAGE_PHONES)]
    registered(sites.two.registrar, written)

    node1.rejoin()
    galera.wait_synced()
    assert ist_received(node1)  # caught up incrementally, not by a full copy
    assert on_node(node1, written) == sorted(written)  # nothing written meanwhile is lost

    phone, response = register(sites.one.registrar, "carol")
    try:
        assert response.status == 200, f"{response.status} {response.reason}"
        galera.settle()
        rings_when_called(phone, "carol", sites.two.proxy)
    finally:
        phone.close()
