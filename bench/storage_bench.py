"""Storage figures: REGISTER-like saves/s and lookups/s per backend and concurrency.

Run from the repository root:
    .venv/bin/python bench/storage_bench.py [--backends sqlite,mariadb,postgres]
        [--concurrency 8,32] [--users 5000] [--seconds 8]

MariaDB and PostgreSQL are private servers started here (tests/dbservers.py) with their
durable default settings (commit = fsync; --no-fsync: without), on this machine's disk;
SQLite is a WAL file with synchronous=NORMAL.
Each save is one REGISTER: one contact of one AOR, stored and answered with every current
binding of the AOR, in one round trip (``location.save``). Phases:
  new       every user registers once (inserts)
  refresh   every user registers again with the next CSeq (updates: the steady state)
  lookup    random users are looked up (what the proxy does per call)
  upsert    the floor: one bare INSERT … ON CONFLICT/DUPLICATE KEY UPDATE per REGISTER, no
            rules, no answer (what a registrar that ignores §10.3 would do)
Each phase is bounded by --users operations and --seconds. Besides ops/s it prints the CPU
time per operation of this client process (for SQLite: everything) and of the server
(mariadbd, or the postgres processes), which other load on the machine disturbs less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dbservers import (
    FAST_MARIADB,
    FAST_POSTGRES,
    DbServer,
    start_mariadb,
    start_postgres,
)

from sipfleet.storage import Aor, BindingUpdate, Dsn, Storage, open_storage
from sipfleet.storage.migrate import upgrade

NOW = int(time.time())


def user(i: int) -> Aor:
    return Aor(f"user{i:06d}", "example.com")


def register(i: int, cseq: int) -> list[BindingUpdate]:
    return [
        BindingUpdate(
            f"sip:user{i:06d}@198.51.100.{i % 250}:{5060 + i % 1000};transport=udp",
            NOW + 3600,
            f"call-{i}@phone",
            cseq,
            received=f"sip:203.0.113.{i % 250}:{40000 + i % 20000}",
            path="<sip:lb1.example.com;lr;ft=abcdef0123456789>",
            user_agent="BenchPhone/1.0",
            socket="udp:127.0.0.1:5070",
            flow=f"ft-{i}",
        )
    ]


async def phase(
    concurrency: int, users: int, seconds: float, operation: Callable[[int], Awaitable[object]]
) -> tuple[int, float]:
    """Run ``operation(i)`` for i in 0..users-1 on ``concurrency`` workers; stop at the limit."""
    next_index = iter(range(users))
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in next_index:
            if time.perf_counter() > deadline:
                return
            await operation(i)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - started


async def bare_upsert(storage: Storage, i: int) -> None:
    """The floor, through the backend's compiled upsert (a bench-only shortcut)."""
    executor = storage._executor  # type: ignore[attr-defined]
    update = register(i, 3)[0]
    row = {field: getattr(update, field) for field in update.__dataclass_fields__}
    row["flow_key"] = update.flow_key
    row.update(ruid=f"r{i}", username=user(i).username, domain="example.com", last_modified=NOW)
    await executor.execute(executor.statements.store_binding, row)


def cpu_seconds(pid: int | None) -> float:
    """CPU time of a server process and its current children (PostgreSQL's backends)."""
    if pid is None:
        return 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *(int(p) for p in children.read_text().split())] if children.exists() else [pid]
    total = 0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    name: str, dsn: str, server_pid: int | None, concurrency: int, users: int, seconds: float
) -> None:
    storage: Storage = open_storage(dsn, pool_size=concurrency, max_in_flight=10 * concurrency)
    try:
        await storage.location.remove_all(user(0))  # connects; the table is emptied below
        await storage.location.purge_expired(now=NOW + 10**6)
        save = storage.location.save
        phases: dict[str, Callable[[int], Awaitable[object]]] = {
            "new": lambda i: save(user(i), register(i, 1), now=NOW, max_contacts=10),
            "refresh": lambda i: save(user(i), register(i, 2), now=NOW, max_contacts=10),
            "lookup": lambda i: storage.location.lookup(user(random.randrange(users)), now=NOW),
            "upsert": lambda i: bare_upsert(storage, i),
        }
        for label, operation in phases.items():
            client, server = own_cpu_seconds(), cpu_seconds(server_pid)
            done, elapsed = await phase(concurrency, users, seconds, operation)
            client = (own_cpu_seconds() - client) / done * 1e6
            server = (cpu_seconds(server_pid) - server) / done * 1e6
            print(
                f"{name:9} {concurrency:4} {label:8} {done:7} {elapsed:7.2f} "
                f"{done / elapsed:9.0f} {client:10.0f} {server:10.0f}"
            )
            if label == "new":
                users = done  # refresh and look up only the users that registered
    finally:
        await storage.close()


@contextmanager
def backend(name: str, durable: bool) -> Iterator[tuple[str, int | None]]:
    """A migrated, empty database of the backend, and its server's PID; stopped afterwards."""
    server: DbServer | None = None
    if name == "sqlite":
        directory = tempfile.TemporaryDirectory(prefix="sipfleet-bench-")
        dsn = f"sqlite://{Path(directory.name) / 'bench.db'}"
    else:
        if name == "mariadb":
            server = start_mariadb(None if durable else FAST_MARIADB)
        else:
            server = start_postgres(None if durable else FAST_POSTGRES)
        dsn = server.create_database("bench")
    try:
        asyncio.run(upgrade(Dsn.parse(dsn)))
        yield dsn, server.process.pid if server and server.process else None
    finally:
        if server is not None:
            server.destroy()
        else:
            directory.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,mariadb,postgres")
    parser.add_argument("--concurrency", default="8,32", help="saves in flight, comma-separated")
    parser.add_argument("--users", type=int, default=5000, help="operations per phase at most")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per phase at most")
    parser.add_argument(
        "--no-fsync", action="store_true", help="servers without fsync at commit (CPU cost only)"
    )
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"{'backend':9} {'conc':>4} {'phase':8} {'ops':>7} {'seconds':>7} {'ops/s':>9} "
        f"{'client us':>10} {'server us':>10}"
    )
    for name in args.backends.split(","):
        with backend(name, durable=not args.no_fsync) as (dsn, pid):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                asyncio.run(measure(name, dsn, pid, concurrency, args.users, args.seconds))

    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
