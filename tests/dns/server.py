"""A small authoritative DNS server for the tests, on dnslib, and the lab around it.

``python -m tests.dns.server ZONE.json ADDRESS PORT`` answers from ZONE.json (read again
whenever it changes on disk, so a test changes a record by rewriting the file) over UDP
and TCP: the records asked for, NODATA with the SOA for a name that has others, NXDOMAIN
with the SOA for a name that has none (the SOA's minimum is the negative TTL); a CNAME
with the records it leads to. Every
query is appended to ZONE.json.log as ``name TYPE``.

``dns_lab`` makes a network namespace with that server on 127.0.0.1:53 and
``/etc/netns/<ns>/resolv.conf`` naming it, so what ``ip netns exec`` starts there reads it
as a user's host reads /etc/resolv.conf; ``entered`` moves the test's own thread into
that namespace (its phones and gateways live there too).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnslib import AAAA, CNAME, NAPTR, QTYPE, RCODE, RR, SOA, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from tests.interop.lab import Namespace

CLONE_NEWNET = 0x40000000
SOA_MINIMUM = 5  # seconds a negative answer may be cached
START_TIMEOUT = 10.0
Record = tuple[str, str, int, list[Any]]  # name, type, TTL, data (as dnslib takes it)


def write_zone(path: Path, records: list[Record]) -> None:
    """Replace the zone at once (a rename: the server never reads half a file)."""
    staged = path.with_suffix(".new")
    staged.write_text(json.dumps([list(record) for record in records]))
    os.replace(staged, path)


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = path.with_name(path.name + ".log")
        self._stamp = -1
        self._records: list[Record] = []
        self._lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        with self._lock:
            records = self._current()
            with self.log.open("a") as log:
                log.write(f"{name} {kind}\n")
        reply = request.reply()
        reply.header.aa = 1
        for owner, rtype, ttl, data in _chain(records, name, kind):
            reply.add_answer(
                RR(owner + ".", getattr(QTYPE, rtype), rdata=_rdata(rtype, data), ttl=ttl)
            )
        if not reply.rr:
            if not any(r[0] == name or r[0].endswith("." + name) for r in records):
                reply.header.rcode = RCODE.NXDOMAIN  # nothing at or under it (RFC 8020)
            times = (1, 3600, 600, 86400, SOA_MINIMUM)
            soa = SOA("ns.example.", "hostmaster.example.", times)
            reply.add_auth(RR("example.", QTYPE.SOA, rdata=soa, ttl=SOA_MINIMUM))
        return reply

    def _current(self) -> list[Record]:
        stamp = self.path.stat().st_mtime_ns
        if stamp != self._stamp:
            self._records = [tuple(r) for r in json.loads(self.path.read_text())]
            self._stamp = stamp
        return self._records


def _chain(records: list[Record], name: str, kind: str) -> list[Record]:
    """The records of ``kind`` at ``name``, or its CNAME and what that names, in turn."""
    found: list[Record] = []
    for _ in range(8):  # a loop of aliases ends somewhere
        direct = [r for r in records if r[0] == name and r[1] == kind]
        alias = [r for r in records if r[0] == name and r[1] == "CNAME"]
        if direct or not alias:
            return found + direct
        found.append(alias[0])
        name = alias[0][3][0]
    return found


def _rdata(rtype: str, data: list[Any]) -> Any:
    if rtype == "NAPTR":
        order, preference, flags, service, regexp, replacement = data
        return NAPTR(
            order, preference, flags.encode(), service.encode(), regexp.encode(), replacement + "."
        )
    if rtype == "SRV":
        priority, weight, port, target = data
        return SRV(priority, weight, port, target + ".")
    return {"A": A, "AAAA": AAAA, "CNAME": CNAME}[rtype](data[0])


def serve(zone: Path, address: str, port: int) -> None:
    resolver = ZoneResolver(zone)
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    servers = [DNSServer(resolver, address, port, tcp=tcp, logger=quiet) for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    zone.with_name(zone.name + ".ready").touch()
    while all(server.isAlive() for server in servers):
        time.sleep(0.5)


@dataclass
class DnsLab:
    ns: Namespace
    zone: Path

    def set_records(self, records: list[Record]) -> None:
        write_zone(self.zone, records)

    def queries(self) -> list[str]:
        log = self.zone.with_name(self.zone.name + ".log")
        return log.read_text().splitlines() if log.exists() else []


@contextmanager
def dns_lab(name_hint: str, workdir: Path, records: list[Record]) -> Iterator[DnsLab]:
    """A namespace with the zone served on 127.0.0.1:53 and its resolv.conf naming it."""
    zone = workdir / "zone.json"
    write_zone(zone, records)
    with Namespace(name_hint) as ns:
        etc = Path("/etc/netns") / ns.name
        etc.mkdir(parents=True)
        try:
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
            argv = [sys.executable, "-m", "tests.dns.server", str(zone), "127.0.0.1", "53"]
            log = (workdir / "dns.log").open("wb")
            server = ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_ready(zone, server, workdir / "dns.log")
                yield DnsLab(ns, zone)
            finally:
                server.terminate()
                server.wait(timeout=10)
                log.close()
        finally:
            shutil.rmtree(etc)


def _wait_ready(zone: Path, server: subprocess.Popen[bytes], log: Path) -> None:
    ready = zone.with_name(zone.name + ".ready")
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the DNS server did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


@contextmanager
def entered(ns: Namespace) -> Iterator[None]:
    """This thread in ``ns`` (its sockets, and the processes it starts) until the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(there)
        os.close(home)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
