"""The proxy with ``node.workers = 2`` over real sockets and processes. The kernel deals
datagrams to the workers by source address, so the caller's and the callee's messages of
a call, or a message sent again from another port, reach either worker; each worker
hands what it does not own to the owner of its Call-ID. Every test starts a proxy of its
own and, once it is stopped, reads from its log what the workers handed each other."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipfleet.sip import Request, Response
from sipfleet.storage import Aor, BindingUpdate, open_storage
from sipfleet.transport.steering import owner_of_call_id
from tests.integration.harness import Cluster, RawUa, RoleProcess, free_port, running_cluster
from tests.integration.sipp import run_sipp, start_sipp, stop_sipp

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
WORKERS = 2
CALLS = 200
CANCELLED = 100
CROSSED = 20
HANDOFFS = re.compile(r"worker (\d+): (\d+) messages handed to other workers, (\d+) taken")
LOST = re.compile(r"(\d+) lost to a full inbox")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("proxy-workers")) as cluster:
        yield cluster


@pytest.fixture
def proxy(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[RoleProcess]:
    node = cluster.start(
        "proxy",
        f"proxy-{request.node.name}",
        node={"workers": WORKERS},
        proxy={"authenticate": False},
    )
    yield node
    cluster.stop_role(node)


def bind(cluster: Cluster, user: str, port: int) -> None:
    """``user`` reachable at 127.0.0.1:``port`` (as a REGISTER through the registrar
    would write it)."""

    async def save() -> None:
        storage = open_storage(cluster.dsn)
        now = int(time.time())
        update = BindingUpdate(f"sip:{user}@127.0.0.1:{port}", now + 3600, f"bind-{user}", 1)
        try:
            await storage.location.save(Aor(user, DOMAIN), [update], now=now, max_contacts=10)
        finally:
            await storage.close()

    asyncio.run(save())


def handoffs(cluster: Cluster, node: RoleProcess) -> dict[int, int]:
    """Stop ``node``; messages each worker handed to the other, from its log. Asserts
    that none were lost on the way."""
    cluster.stop_role(node)
    text = node.log_text()
    assert all(int(lost) == 0 for lost in LOST.findall(text)), text[-3000:]
    return {int(worker): int(handed) for worker, handed, _ in HANDOFFS.findall(text)}


def calls(
    cluster: Cluster, proxy: RoleProcess, workdir: Path, phone: str, caller: str, count: int
) -> dict[int, int]:
    """``count`` calls at 50/s from a sipp running ``caller`` to one running ``phone``,
    through ``proxy``; both must end with every call done. Returns the handoffs."""
    port = free_port()
    user = f"{phone}-{port}"
    bind(cluster, user, port)
    callee = workdir / "callee.csv"
    callee.write_text(f"SEQUENTIAL\n{user};{DOMAIN}\n")
    device = start_sipp(phone, workdir, local_port=port, calls=count, timeout=60)
    result = run_sipp(
        caller,
        f"127.0.0.1:{proxy.port}",
        workdir,
        calls=count,
        rate=50,
        local_port=free_port(),
        inf=callee,
        timeout=60,
    )
    assert result.ok, result.explain()
    assert stop_sipp(device, wait=15) == 0  # every call reached the phone, none twice
    return handoffs(cluster, proxy)


def test_calls_answered_and_hung_up_through_two_workers(
    cluster: Cluster, proxy: RoleProcess, tmp_path: Path
) -> None:
    """INVITE, 100/180/200, ACK, BYE and its 200 of every call, whichever worker each
    datagram lands on."""
    handed = calls(cluster, proxy, tmp_path, "proxy_uas_answer", "proxy_uac_call", CALLS)
    assert set(handed) == {0, 1}
    assert sum(handed.values()) > 2 * CALLS  # about half of ~1,400 datagrams


def test_calls_cancelled_while_ringing_through_two_workers(
    cluster: Cluster, proxy: RoleProcess, tmp_path: Path
) -> None:
    """Every CANCEL cancels its call (200 to the CANCEL, 487 to the INVITE), the calls of
    the worker that does not receive the caller's datagrams too."""
    phone, caller = "proxy_uas_ring_cancel", "proxy_uac_cancel"
    handed = calls(cluster, proxy, tmp_path, phone, caller, CANCELLED)
    assert sum(handed.values()) > CANCELLED


def invite(caller: RawUa, callee: str, call_id: str, branch: str, to: str = "") -> bytes:
    """An INVITE from ``caller``; with ``to`` (a final answer's To), the ACK of that answer
    (a failure's ACK has the INVITE's Request-URI, From, Call-ID and branch)."""
    transport = caller.transport.upper()
    method = "ACK" if to else "INVITE"
    return (
        f"{method} sip:{callee}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {caller.host}:{caller.port};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:caller@{DOMAIN}>;tag=c{call_id}\r\n"
        f"To: {to or f'<sip:{callee}@{DOMAIN}>'}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:caller@{caller.host}:{caller.port};transport={caller.transport}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def ack(caller: RawUa, callee: str, response: Response, branch: str) -> bytes:
    return invite(caller, callee, response.call_id, branch, response.header("to") or "")


def test_a_retransmitted_invite_is_forwarded_once(cluster: Cluster, proxy: RoleProcess) -> None:
    """Ten copies of one INVITE, each from a port of its own (a NAT rebinding, another
    LB), so they reach both workers: the owner's server transaction absorbs them all;
    the phone sees one INVITE."""
    phone = RawUa(("127.0.0.1", proxy.port))
    caller = RawUa(("127.0.0.1", proxy.port))
    copies = [RawUa(("127.0.0.1", proxy.port)) for _ in range(9)]
    try:
        bind(cluster, "once", phone.port)
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        data = invite(caller, "once", secrets.token_hex(8), branch)
        for sender in [caller, *copies]:
            sender.send(data)
            time.sleep(0.01)
        first = phone.expect_request("INVITE")
        phone.answer(first, 180)
        more = [m for m in iter(lambda: phone.recv(1.5), None) if isinstance(m, Request)]
        assert [m.method for m in more] == []
        phone.answer(first, 486)
        response = caller.expect_response(486)
        caller.send(ack(caller, "once", response, branch))
    finally:
        for ua in [phone, caller, *copies]:
            ua.close()
    assert sum(handoffs(cluster, proxy).values()) > 0


def test_a_cancel_from_another_port_cancels_the_call(cluster: Cluster, proxy: RoleProcess) -> None:
    """Each INVITE and its CANCEL from two ports, which the kernel's hash deals to the
    same worker or not: about half of the CANCELs reach the worker that did not receive
    the INVITE, and every one cancels its call."""
    phone = RawUa(("127.0.0.1", proxy.port))
    try:
        bind(cluster, "twoports", phone.port)
        for _ in range(CROSSED):
            cancel_from_another_port(phone, proxy.port)
    finally:
        phone.close()
    assert sum(handoffs(cluster, proxy).values()) > 0


def cancel_from_another_port(phone: RawUa, port: int) -> None:
    caller, other = RawUa(("127.0.0.1", port)), RawUa(("127.0.0.1", port))
    try:
        call_id, branch = secrets.token_hex(8), f"z9hG4bK{secrets.token_hex(6)}"
        caller.send(invite(caller, "twoports", call_id, branch))
        ringing = phone.expect_request("INVITE")
        phone.answer(ringing, 180)
        cancel = invite(caller, "twoports", call_id, branch).replace(b"INVITE", b"CANCEL")
        other.send(cancel)  # the Via names caller's port, rport the one it came from
        phone.answer(phone.expect_request("CANCEL"), 200)
        phone.answer(ringing, 487)
        other.expect_response(200)
        response = caller.expect_response(487)
        caller.send(ack(caller, "twoports", response, branch))
    finally:
        caller.close()
        other.close()


def call_ids_of_both(each: int) -> list[str]:
    """Random Call-IDs, ``each`` owned by worker 0 and ``each`` by worker 1."""
    found: dict[int, list[str]] = {0: [], 1: []}
    while min(len(ids) for ids in found.values()) < each:
        call_id = secrets.token_hex(8)
        mine = found[owner_of_call_id(call_id.encode(), WORKERS)]
        if len(mine) < each:
            mine.append(call_id)
    return found[0] + found[1]


def test_answers_reach_a_tcp_caller_through_the_worker_holding_its_connection(
    cluster: Cluster, proxy: RoleProcess
) -> None:
    """One TCP connection, accepted by one worker; Call-IDs of both workers on it. The
    other worker's answers are written by the worker that holds the connection."""
    phone = RawUa(("127.0.0.1", proxy.port))
    caller = RawUa(("127.0.0.1", proxy.port), "tcp")
    try:
        bind(cluster, "tcp", phone.port)
        branches = {call_id: f"z9hG4bK{secrets.token_hex(6)}" for call_id in call_ids_of_both(4)}
        for call_id, branch in branches.items():
            caller.send(invite(caller, "tcp", call_id, branch))
        ringing: set[str] = set()
        deadline = time.monotonic() + 10
        while ringing != set(branches) and time.monotonic() < deadline:
            request = phone.expect_request("INVITE")  # a retransmission: answered again
            phone.answer(request, 486)
            ringing.add(request.call_id)
        answered = set()
        for _ in branches:
            response = caller.expect_response(486)
            caller.send(ack(caller, "tcp", response, branches[response.call_id]))
            answered.add(response.call_id)
        assert answered == set(branches)
    finally:
        phone.close()
        caller.close()
    assert sum(handoffs(cluster, proxy).values()) > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_proxy_on_a_taken_address_stops_at_start(
    cluster: Cluster, proxy: RoleProcess, workers: int
) -> None:
    """SO_REUSEPORT would let a second copy share the port unseen: it must fail instead,
    naming the address, and the first must go on serving."""
    config = proxy.config_path.read_text().replace("workers = 2", f"workers = {workers}")
    second = proxy.config_path.with_name(f"second-{workers}.toml")
    second.write_text(config)
    run = [sys.executable, "-m", "sipfleet.cli", "run", "proxy", "-c", str(second)]
    result = subprocess.run(run, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert f"127.0.0.1:{proxy.port}: Address already in use" in result.stderr, result.stderr
    assert proxy.process is not None
    assert proxy.process.poll() is None
    caller = RawUa(("127.0.0.1", proxy.port))
    try:
        caller.send(invite(caller, "nobody", secrets.token_hex(8), "z9hG4bKgone"))
        caller.expect_response(404)  # the first still answers
    finally:
        caller.close()
