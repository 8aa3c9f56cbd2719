"""Galera certification conflicts and REGISTER saves: how often, and what they cost.

Run from the repository root, as root (network namespaces):
    .venv/bin/python bench/galera_conflicts.py [--users 500] [--saves 6000] [--seconds 10]
        [--concurrency 32] [--outbound]

A three-node Galera cluster (tests/galera.py) and two "sites": each an open_storage on
one node, as a site's registrar has, saving REGISTERs (one contact each, batched as the
registrar batches them) from --concurrency workers, at most --saves saves or --seconds
per site and scenario:
  disjoint   site 1 on node 1 and site 2 on node 2 save different AORs
  same       site 1 on node 1 and site 2 on node 2 save the same AORs at once (a phone
             registered at both sites; the worst case)
  one-node   both sites on node 1, the same AORs (what a single primary sees)
With --outbound every binding has an instance and reg-id (RFC 5626), which sipfleet saves
in one explicit transaction each instead of batches of single statements.
Printed per scenario: saves/s of both sites together, the CPU this process used (the
client side of both sites: at 100 % of a core it is the bottleneck), the conflicts Galera reported
(certification failures and brute-force aborts on the nodes: transactions that were
rolled back, counted by the servers), the conflicts sipfleet retried (its db error
metric), the saves that failed after the retries (the registrar would answer 503 with
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


def update(i: int, cseq: int, outbound: bool) -> BindingUpdate:
    """The phone's one binding: same contact and Call-ID at both sites, rising CSeq.
    ``outbound``: an RFC 5626 phone's (instance, reg-id), saved in an explicit
    transaction; otherwise a plain one, saved in a batch of single statements."""
    return BindingUpdate(
        f"sip:user{i:05d}@198.51.100.{i % 250}:5060", NOW + 3600, f"call-{i}@phone", cseq,
        instance=f"<urn:uuid:00000000-0000-0000-0000-{i:012d}>" if outbound else None,
        reg_id=1 if outbound else None,
    )  # fmt: skip


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
    cpu: float  # this process's CPU seconds (both sites' client side)
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
                updates = [update(i, cseq, args.outbound)]
                await site.storage.location.save(aor(i), updates, now=NOW, max_contacts=10)
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
        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(run_site(site, acked, args) for site in sites))
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        conflicts, retried = server_conflicts(nodes) - conflicts, retried_conflicts() - retried
        lost = await count_lost(sites[0].storage, acked)
    finally:
        for site in sites:
            await site.storage.close()
    saves = sum(site.saved for site in sites)
    failed = sum(site.failed for site in sites)
    return Outcome(saves, elapsed, cpu, conflicts, retried, failed, lost)


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
    kind = "outbound (RFC 5626: transactions)" if args.outbound else "plain (batched)"
    print(f"{args.users} AORs per site, {args.concurrency} saves in flight per site, {kind}")
    print(f"{'scenario':9} {'saves':>6} {'s':>5} {'saves/s':>8} {'client':>7} {'galera':>7} "
          f"{'retried':>8} {'failed':>7} {'lost':>5}")  # fmt: skip
    for number, (name, (placement, same_aors)) in enumerate(SCENARIOS.items()):
        outcome = await scenario(galera, number, placement, same_aors, args)
        rate = outcome.saves / outcome.seconds
        print(
            f"{name:9} {outcome.saves:6} {outcome.seconds:5.1f} {rate:8.0f} "
            f"{outcome.cpu / outcome.seconds:7.0%} {outcome.server_conflicts:7} "
            f"{outcome.retried:8} {outcome.failed:7} {outcome.lost:5}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=500, help="AORs per site")
    parser.add_argument("--saves", type=int, default=6000, help="saves per site and scenario")
    parser.add_argument("--seconds", type=float, default=10.0, help="time limit per scenario")
    parser.add_argument("--concurrency", type=int, default=32, help="saves in flight per site")
    parser.add_argument(
        "--outbound", action="store_true", help="RFC 5626 bindings (explicit transactions)"
    )
    args = parser.parse_args()
    why = why_no_galera()
    if why is not None:
        sys.exit(why)
    with galera_cluster() as galera:
        asyncio.run(measure(galera, args))


if __name__ == "__main__":
    main()
