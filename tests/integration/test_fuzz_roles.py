"""The parser's mutation fuzzer (tests/sip/test_fuzz.py) against running roles: an LB,
a registrar and a proxy, each a process of its own, over UDP and TCP. Nothing that
arrives may cost a role a traceback or an ERROR line, and each one still answers
afterwards. Then requests that fit in a datagram but not once a hop has added to them.

No name is looked up: a fuzzed Route or Request-URI names hosts anywhere, and the
proxy would ask the machine's resolver. The roles start with a ``sitecustomize`` (on
PYTHONPATH) that makes every event loop's ``getaddrinfo`` refuse anything but an IP
address and dnspython's resolver (RFC 3263 lookups) refuse every query, so all traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from sipfleet.sip import Response
from tests.integration.harness import Cluster, RawUa, running_cluster
from tests.sip.test_fuzz import SEEDS, mutations

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = ("lb", "registrar", "proxy")
UDP_MUTANTS = 3000  # of the fuzzer's ~19k, drawn with a fixed seed
TCP_MUTANTS = 900
TCP_BATCH = 10  # mutants per connection: a broken frame closes it, a truncated one
# swallows what follows; a fresh connection now and then keeps most of them whole
MAX_DATAGRAM = 65507  # IPv4
SEND_SECONDS = 20.0  # the whole run is cut here, whatever is left
BAD_LOG_LINE = re.compile(r"\bERROR\b|Traceback")

NO_DNS = '''\
"""Written by tests/integration/test_fuzz_roles.py: no name lookups in this process."""
import asyncio
import ipaddress
import socket


def _refuse_names(original):
    async def getaddrinfo(self, host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        try:
            ipaddress.ip_address((name or "").split("%")[0])
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: not looked up in tests")
        return await original(self, host, *args, **kwargs)

    return getaddrinfo


asyncio.BaseEventLoop.getaddrinfo = _refuse_names(asyncio.BaseEventLoop.getaddrinfo)
try:
    import uvloop
except ImportError:
    pass
else:
    uvloop.Loop.getaddrinfo = _refuse_names(uvloop.Loop.getaddrinfo)

import dns.asyncresolver
import dns.exception


async def _no_query(self, qname, *args, **kwargs):
    raise dns.exception.DNSException(f"{qname}: not looked up in tests")


dns.asyncresolver.Resolver.resolve = _no_query
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Registrar asking for digest (the REGISTER seed carries an Authorization to
    mangle), proxy without (so mutants get past it into routing), LB of two workers."""
    workdir = tmp_path_factory.mktemp("fuzz")
    shim = workdir / "no-dns"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_DNS)
    path = os.pathsep.join(filter(None, (str(shim), os.environ.get("PYTHONPATH"))))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", path)  # read by the role processes the cluster starts
        with running_cluster(workdir, overrides={"proxy": {"authenticate": False}}) as cluster:
            cluster.add_subscriber("alice", "example.com", "secret")
            cluster.add_lb_target("registrar", cluster.start("registrar"))
            cluster.add_lb_target("proxy", cluster.start("proxy"))
            cluster.start("lb", lb={"probe_interval_s": 1.0}, node={"workers": 2})
            yield cluster


def address(cluster: Cluster, role: str) -> tuple[str, int]:
    return "127.0.0.1", cluster.roles[role].port


def bad_lines(cluster: Cluster) -> list[str]:
    return [
        f"{name}: {line}"
        for name, node in cluster.roles.items()
        for line in node.log_text().splitlines()
        if BAD_LOG_LINE.search(line)
    ]


def mutants(count: int, salt: str) -> list[bytes]:
    """``count`` mutants of the fuzzer's seeds, the same ones every run."""
    every = [
        mutant
        for name in sorted(SEEDS)
        for mutant in mutations(SEEDS[name], random.Random(f"roles-{name}"))
    ]
    return random.Random(f"roles-{salt}").sample(every, count)


def drain(sock: socket.socket) -> None:
    """Read whatever answers arrived (so no buffer fills), without waiting."""
    for _ in range(1000):
        try:
            if not sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the role: it closed on a broken frame
            return


def send_udp(cluster: Cluster, batch: list[bytes], deadline: float) -> int:
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for n, mutant in enumerate(batch):
            if time.monotonic() > deadline:
                break
            if len(mutant) > MAX_DATAGRAM:  # goes over TCP
                continue
            try:
                sock.sendto(mutant, address(cluster, ROLES[n % len(ROLES)]))
            except BlockingIOError:
                time.sleep(0.01)
                continue
            sent += 1
            if n % 50 == 49:  # about 5k a second: the roles log every datagram (debug)
                drain(sock)
                time.sleep(0.01)
        time.sleep(0.5)
        drain(sock)
    return sent


def send_tcp(cluster: Cluster, batch: list[bytes], deadline: float) -> int:
    sent = 0
    for start in range(0, len(batch), TCP_BATCH):
        if time.monotonic() > deadline:
            break
        role = ROLES[(start // TCP_BATCH) % len(ROLES)]
        with socket.create_connection(address(cluster, role), timeout=2) as sock:
            sock.setblocking(False)
            for mutant in batch[start : start + TCP_BATCH]:
                try:
                    sock.sendall(mutant)
                except BlockingIOError:  # a large mutant into a full buffer: enough
                    break
                except OSError:  # the role closed it (a frame it could not cut)
                    break
                sent += 1
                drain(sock)
            time.sleep(0.005)
            drain(sock)
    return sent


def answers_options(cluster: Cluster, role: str) -> Response:
    ua = RawUa(address(cluster, role))
    try:
        ua.request("OPTIONS", f"sip:127.0.0.1:{cluster.roles[role].port}", user="alice")
        return ua.final_response(5.0)  # raises when the role no longer answers
    finally:
        ua.close()


def test_fuzzed_input_costs_no_role_a_traceback(cluster: Cluster) -> None:
    deadline = time.monotonic() + SEND_SECONDS
    sent_udp = send_udp(cluster, mutants(UDP_MUTANTS, "udp"), deadline)
    sent_tcp = send_tcp(cluster, mutants(TCP_MUTANTS, "tcp"), deadline)
    assert sent_udp > UDP_MUTANTS // 2
    assert sent_tcp > TCP_MUTANTS // 4
    for role in ROLES:
        answers_options(cluster, role)
    assert bad_lines(cluster) == []


# -- requests that grow too large for a datagram on the way ------------------------------


def fits_until_forwarded(
    ua: RawUa, method: str, uri: str, *, to_tag: str = "", route: str = "", size: int = 65490
) -> bytes:
    """A request of ``size`` bytes (the body fills it): one datagram holds it, but not
    once a hop has added its Via and Record-Route."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {ua.host}:{ua.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:alice@example.com>;tag={secrets.token_hex(4)}",
        f"To: <sip:{'bob' if method != 'REGISTER' else 'alice'}@example.com>{to_tag}",
        *([f"Route: {route}"] if route else []),
        f"Call-ID: {secrets.token_hex(8)}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:alice@{ua.host}:{ua.port}>",
        "Content-Type: text/plain",
    ]
    head = "\r\n".join(lines) + "\r\nContent-Length: 00000\r\n\r\n"
    fill = size - len(head)
    return (head.replace("00000", str(fill)) + "x" * fill).encode()


def test_request_too_large_once_forwarded_by_the_lb_is_answered_513(cluster: Cluster) -> None:
    ua = RawUa(address(cluster, "lb"))
    try:
        request = fits_until_forwarded(ua, "OPTIONS", "sip:bob@example.com")
        ua.send(request)
        response = ua.final_response(5.0)
        assert (response.status, response.reason) == (513, "Message Too Large")
        assert len(response.vias) == 1  # the LB's own Via is not in it
    finally:
        ua.close()
    assert bad_lines(cluster) == []


def test_register_whose_answer_is_too_large_is_answered_or_dropped_quietly(
    cluster: Cluster,
) -> None:
    """The answer copies the Via: one too long for a datagram makes the 200 too large
    too. It is lost, like a datagram the network loses; so is every retransmission."""
    ua = RawUa(address(cluster, "registrar"))
    try:
        head = [  # nothing the answer does not copy: the answer is the larger
            "REGISTER sip:example.com SIP/2.0",
            f"Via: SIP/2.0/UDP {ua.host}:{ua.port};branch=z9hG4bK{secrets.token_hex(6)};x=",
            "From: <sip:alice@example.com>;tag=1",
            "To: <sip:alice@example.com>",
            f"Call-ID: {secrets.token_hex(8)}",
            "CSeq: 1 REGISTER",
            "Content-Length: 0",
        ]
        small = ("\r\n".join(head) + "\r\n\r\n").encode()
        via_end = small.index(b"\r\n", small.index(b"Via:"))
        pad = b"v" * (MAX_DATAGRAM - len(small))
        register = small[:via_end] + pad + small[via_end:]
        assert len(register) == MAX_DATAGRAM
        for _ in range(3):  # the first, then retransmissions answered from the cache
            ua.send(register)
            time.sleep(0.3)
        ua.request("OPTIONS", "sip:example.com")  # it still answers
        assert ua.final_response(5.0).status == 200
    finally:
        ua.close()
    assert "Message too long" in cluster.roles["registrar"].log_text()  # as meant
    assert bad_lines(cluster) == []
