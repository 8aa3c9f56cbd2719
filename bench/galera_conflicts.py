"""Galera certification conflicts and REGISTER saves: how often, and what they cost.

Run from the repository root, as root (network namespaces):
    .venv/bin/python bench/galera_conflicts.py [--users 500] [--saves 6000] [--seconds 10]
        [--concurrency 32]

A three-node Galera cluster (tests/galera.py) and two "sites": each an open_storage on
one node, as a site's registrar has, saving REGISTERs (one contact each, batched as the
registrar batches them) from --concurrency workers, at most --saves saves or --seconds
per site and scenario:
  disjoint   site 1 on node 1 and site 2 on node 2 save different AORs
  same       site 1 on node 1 and site 2 on node 2 save the same AORs at once (a phone
             registered at both sites; the worst case)
  one-node   both sites on node 1, the same AORs (what a single primary sees)
Printed per scenario: saves/s of both sites together, the conflicts Galera reported
(certification failures and brute-force aborts on the nodes: transactions that were
rolled back, counted by the servers), the conflicts sipfleet retried (its db error
metric), the saves that failed after the retries (the registrar would answer 500 with
Retry-After), and whether every acknowledged save is in the database (the stored CSeq of
each AOR is the highest one acknowledged). Figures in docs/storage.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.galera import Galera, GaleraNode, galera_cluster, why_no_galera

from sipfleet.storage import Aor, BindingUpdate, Dsn, Storage, StorageUnavailable, open_storage
from sipfleet.storage.migrate import upgrade
from sipfleet.storage.timing import STATEMENTS

NOW = int(time.time())
DOMAIN = "example.com"
SERVER_COUNTERS = ("wsrep_local_cert_failures", "wsrep_local_bf_aborts")


def aor(i: int) -> Aor:
    return Aor(f"user{i:05d}", DOMAIN)


def update(i: int, cseq: int) -> BindingUpdate:
    """The phone's one binding: same contact and Call-ID at both sites, rising CSeq."""
    return BindingUpdate(
        f"sip:user{i:05d}@198.51.100.{i % 250}:5060", NOW + 3600, f"call-{i}@phone", cseq
    )


@dataclass
class Site:
    storage: Storage
    users: range  # the AORs it saves, round robin
    parity: int  # its CSeqs: 2 * round + parity, so both sites' saves are fresh
    saved: int = 0
    failed: int = 0


@dataclass
class Outcome:
    saves: int
    seconds: float
    server_conflicts: int
    retried: int
    failed: int
    lost: int


async def run_site(site: Site, acked: dict[int, int], args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.seconds
    turns = iter(range(args.saves))

    async def worker() -> None:
        for turn in turns:
            if time.monotonic() > deadline:
                return
            i = site.users[turn % len(site.users)]
            cseq = 2 * (turn // len(site.users)) + site.parity + 2
            try:
                await site.storage.location.save(
                    aor(i), [update(i, cseq)], now=NOW, max_contacts=10
                )
            except StorageUnavailable:
                site.failed += 1
                continue
            site.saved += 1
            acked[i] = max(acked.get(i, 0), cseq)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))


def server_conflicts(nodes: list[GaleraNode]) -> int:
    return sum(int(node.status(name) or 0) for node in nodes for name in SERVER_COUNTERS)


def retried_conflicts() -> int:
    return sum(n for (kind, error), n in STATEMENTS.errors.items() if error == "conflict")


async def scenario(
    galera: Galera,
    number: int,
    placement: tuple[int, int],
    same_aors: bool,
    args: argparse.Namespace,
) -> Outcome:
    """One scenario on AORs of its own (``number``: its place in SCENARIOS)."""
    nodes = galera.nodes
    first = 2 * number * args.users
    users = range(first, first + args.users)
    other = users if same_aors else range(first + args.users, first + 2 * args.users)
    sites = [
        Site(open_storage(nodes[n].dsn(), pool_size=args.concurrency), aors, parity)
        for n, aors, parity in ((placement[0], users, 0), (placement[1], other, 1))
    ]
    acked: dict[int, int] = {}
    try:
        for site in sites:
            await site.storage.location.count(aor(first))  # connected before the clock starts
        conflicts, retried = server_conflicts(nodes), retried_conflicts()
        started = time.monotonic()
        await asyncio.gather(*(run_site(site, acked, args) for site in sites))
        elapsed = time.monotonic() - started
        conflicts, retried = server_conflicts(nodes) - conflicts, retried_conflicts() - retried
        lost = await count_lost(sites[0].storage, acked)
    finally:
        for site in sites:
            await site.storage.close()
    saves = sum(site.saved for site in sites)
    failed = sum(site.failed for site in sites)
    return Outcome(saves, elapsed, conflicts, retried, failed, lost)


async def count_lost(storage: Storage, acked: dict[int, int]) -> int:
    """AORs whose stored CSeq is below the highest one a save acknowledged."""
    lost = 0
    for i, cseq in acked.items():
        bindings = await storage.location.lookup(aor(i), now=NOW)
        if not bindings or bindings[0].cseq < cseq:
            lost += 1
    return lost


SCENARIOS = {"disjoint": ((0, 1), False), "same": ((0, 1), True), "one-node": ((0, 0), True)}


async def measure(galera: Galera, args: argparse.Namespace) -> None:
    await upgrade(Dsn.parse(galera.nodes[0].dsn()))
    galera.wait_synced()
    print(f"{'scenario':9} {'saves':>6} {'s':>5} {'saves/s':>8} {'galera':>7} {'retried':>8} "
          f"{'failed':>7} {'lost':>5}")  # fmt: skip
    for number, (name, (placement, same_aors)) in enumerate(SCENARIOS.items()):
        outcome = await scenario(galera, number, placement, same_aors, args)
        rate = outcome.saves / outcome.seconds
        print(
            f"{name:9} {outcome.saves:6} {outcome.seconds:5.1f} {rate:8.0f} "
            f"{outcome.server_conflicts:7} {outcome.retried:8} {outcome.failed:7} "
            f"{outcome.lost:5}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=500, help="AORs per site")
    parser.add_argument("--saves", type=int, default=6000, help="saves per site and scenario")
    parser.add_argument("--seconds", type=float, default=10.0, help="time limit per scenario")
    parser.add_argument("--concurrency", type=int, default=32, help="saves in flight per site")
    args = parser.parse_args()
    why = why_no_galera()
    if why is not None:
        sys.exit(why)
    with galera_cluster() as galera:
        asyncio.run(measure(galera, args))


if __name__ == "__main__":
    main()
