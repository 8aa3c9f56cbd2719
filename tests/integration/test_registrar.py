"""The registrar over real sockets, driven by sipp (Debian's sip-tester)."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipfleet.sip import Response, parse_message
from tests.conftest import new_database
from tests.integration.harness import Cluster, free_port, running_cluster
from tests.integration.sipp import SippRun, register_scenario, run_sipp

pytestmark = pytest.mark.integration
DOMAIN = "example.com"


BACKENDS = [
    "sqlite",
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


def dsn_for(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return ""
    server = request.getfixturevalue(f"{'mariadb' if backend == 'mysql' else 'postgres'}_server")
    return new_database(server, "reg")


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    backend = getattr(request, "param", "sqlite")
    with running_cluster(tmp_path / "cluster", dsn=dsn_for(backend, request)) as cluster:
        cluster.add_subscriber("alice", DOMAIN, "secret")
        yield cluster


on_every_backend = pytest.mark.parametrize("cluster", BACKENDS, indirect=True)


def start_registrar(cluster: Cluster, **registrar: Any) -> int:
    node = cluster.start("registrar", registrar={"min_expires": 60, **registrar})
    return node.port


def register(
    cluster: Cluster,
    tmp_path: Path,
    *,
    port: int | None = None,
    password: str = "secret",
    name: str = "register",
    **scenario: Any,
) -> SippRun:
    path = register_scenario(tmp_path, user="alice", name=name, **scenario)
    registrar = cluster.roles["registrar"].port
    return run_sipp(
        path,
        f"127.0.0.1:{registrar}",
        tmp_path,
        local_port=port or free_port(),
        extra=["-au", "alice", "-ap", password, "-s", "alice"],
    )


def contacts(cluster: Cluster) -> dict[str, int]:
    return {b.contact: b.expires for b in cluster.bindings("alice", DOMAIN)}


@on_every_backend
def test_register_with_digest_stores_the_binding(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster)
    port = free_port()
    result = register(cluster, tmp_path, port=port)
    assert result.ok, result.explain()
    assert list(contacts(cluster)) == [f"sip:alice@127.0.0.1:{port};transport=UDP"]
    assert f"<sip:alice@127.0.0.1:{port};transport=UDP>;expires=600" in result.messages
    assert "\nDate: " in result.messages


@on_every_backend
def test_refresh_keeps_one_binding_with_the_new_expiry(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster)
    port = free_port()
    assert register(cluster, tmp_path, port=port, expires=300).ok
    first = contacts(cluster)
    assert register(cluster, tmp_path, port=port, expires=900, name="refresh").ok
    second = contacts(cluster)
    assert list(first) == list(second)
    (contact,) = second
    assert second[contact] - first[contact] >= 590


@on_every_backend
def test_unregister_with_expires_zero(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster)
    port = free_port()
    assert register(cluster, tmp_path, port=port).ok
    result = register(cluster, tmp_path, port=port, expires=0, name="unregister")
    assert result.ok, result.explain()
    assert contacts(cluster) == {}


@on_every_backend
def test_wildcard_removes_every_binding(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster)
    assert register(cluster, tmp_path, name="phone1").ok
    assert register(cluster, tmp_path, name="phone2").ok
    assert len(contacts(cluster)) == 2
    result = register(cluster, tmp_path, contact="*", expires=0, name="wildcard")
    assert result.ok, result.explain()
    assert contacts(cluster) == {}


def test_wildcard_with_nonzero_expires_is_400(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster)
    assert register(cluster, tmp_path, name="phone").ok
    result = register(cluster, tmp_path, contact="*", expires=60, expect=400, name="bad")
    assert result.ok, result.explain()
    assert len(contacts(cluster)) == 1


def test_too_brief_expiry_gets_423_with_min_expires(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster)
    result = register(cluster, tmp_path, expires=10, expect=423)
    assert result.ok, result.explain()
    assert "Min-Expires: 60" in result.messages
    assert contacts(cluster) == {}


@on_every_backend
def test_max_contacts_refuses_one_more_and_says_why(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster, max_contacts=2)
    assert register(cluster, tmp_path, name="one").ok
    assert register(cluster, tmp_path, name="two").ok
    result = register(cluster, tmp_path, expect=403, name="three")
    assert result.ok, result.explain()
    assert "Too many registered contacts" in result.messages
    assert len(contacts(cluster)) == 2


@on_every_backend
def test_path_is_stored_and_echoed_when_supported(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster, trusted_lbs=["127.0.0.2"])
    path = "<sip:edge.example.com;lr>"
    result = register(cluster, tmp_path, headers=(f"Path: {path}", "Supported: path"))
    assert result.ok, result.explain()
    assert f"Path: {path}" in result.messages.split("200 OK", 1)[1]
    (binding,) = cluster.bindings("alice", DOMAIN)
    assert binding.path == path


def test_path_without_support_is_420(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster, trusted_lbs=["127.0.0.2"])
    result = register(cluster, tmp_path, headers=("Path: <sip:edge.example.com;lr>",), expect=420)
    assert result.ok, result.explain()
    assert "Unsupported: path" in result.messages
    assert contacts(cluster) == {}


def test_wrong_password_is_challenged_again(cluster: Cluster, tmp_path: Path) -> None:
    start_registrar(cluster)
    result = register(cluster, tmp_path, password="guess", expect=401)
    assert result.ok, result.explain()
    assert contacts(cluster) == {}


def send_register(port: int, user: str, authorization: str) -> Response:
    """One REGISTER from a plain UDP socket (no sipp: the test compares two answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        local = sock.getsockname()[1]
        request = (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-{local};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{user}@{DOMAIN}>;tag=x\r\n"
            f"To: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: scan-{local}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:x@127.0.0.1:{local}>\r\n"
            f"Authorization: {authorization}\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(request.encode(), ("127.0.0.1", port))
        answer = parse_message(sock.recv(65535))
    assert isinstance(answer, Response)
    return answer


def test_unknown_user_and_wrong_password_look_the_same(cluster: Cluster) -> None:
    port = start_registrar(cluster)
    fake = (
        'Digest username="{user}", realm="example.com", nonce="{nonce}", uri="sip:example.com", '
        'response="0123456789abcdef0123456789abcdef", algorithm=MD5, qop=auth, nc=00000001, '
        'cnonce="abc"'
    )
    nonce = "0" * 56
    wrong = send_register(port, "alice", fake.format(user="alice", nonce=nonce))
    unknown = send_register(port, "mallory", fake.format(user="mallory", nonce=nonce))
    assert (wrong.status, wrong.reason) == (unknown.status, unknown.reason) == (401, "Unauthorized")
    assert [k for k in wrong.keys if k != "to"] == [k for k in unknown.keys if k != "to"]


def plain_register(user: str, local: int) -> bytes:
    """A REGISTER without credentials from 127.0.0.1:``local``, Call-ID ``call-USER``."""
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-{user}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=x\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: call-{user}\r\n"
        f"CSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:{local}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_two_workers_share_the_address(cluster: Cluster) -> None:
    """node.workers = 2: two processes behind one address, datagrams dealt at random."""
    node = cluster.start("registrar", registrar={"authenticate": False}, node={"workers": 2})
    assert node.process is not None
    pid = node.process.pid
    assert len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()) == 2
    users = [f"w{i}" for i in range(40)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        local = sock.getsockname()[1]
        for user in users:
            sock.sendto(plain_register(user, local), ("127.0.0.1", node.port))
        answers = [parse_message(sock.recv(65535)) for _ in users]
    assert [a.status for a in answers if isinstance(a, Response)] == [200] * len(users)
    assert all(len(cluster.bindings(user, DOMAIN)) == 1 for user in users)


@pytest.mark.mysql
@pytest.mark.parametrize("cluster", ["mysql"], indirect=True)
def test_database_outage_gets_503_with_retry_after_then_recovers(
    cluster: Cluster, tmp_path: Path, mariadb_server: Any
) -> None:
    start_registrar(cluster)
    assert register(cluster, tmp_path, name="before").ok
    mariadb_server.stop()
    try:
        result = register(cluster, tmp_path, expect=503, name="during")
        assert result.ok, result.explain()
        answer = result.messages.rsplit("SIP/2.0 503 Service Unavailable", 1)[1]
        assert "Retry-After:" in answer
    finally:
        mariadb_server.start()
    result = register(cluster, tmp_path, name="after")
    assert result.ok, result.explain()
    assert len(contacts(cluster)) == 2


def timed_register(sock: socket.socket, port: int, user: str) -> tuple[Response, float]:
    """Send one REGISTER and wait (5 s at most) for its answer: the answer, the seconds."""
    started = time.monotonic()
    sock.sendto(plain_register(user, sock.getsockname()[1]), ("127.0.0.1", port))
    answer = parse_message(sock.recv(65535))
    assert isinstance(answer, Response)
    return answer, time.monotonic() - started


def test_a_held_sqlite_write_lock_gets_prompt_503s_then_the_registrar_recovers(
    cluster: Cluster,
) -> None:
    """Another process holds the database's write lock: REGISTERs get 503 with Retry-After
    within the deadline (about a second), not silence; served again once it is released."""
    port = start_registrar(cluster, authenticate=False)
    assert cluster.dsn.startswith("sqlite:///")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        assert timed_register(sock, port, "before")[0].status == 200
        holder = sqlite3.connect(cluster.dsn.removeprefix("sqlite:///"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock, held for several seconds
            during = [timed_register(sock, port, f"during{i}") for i in range(6)]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        released = time.monotonic()
        # As a phone would, but sooner than its Retry-After: a new REGISTER every 0.1 s.
        for attempt in range(30):
            answer, _ = timed_register(sock, port, f"after{attempt}")
            if answer.status == 200:
                break
            time.sleep(0.1)
        recovered = time.monotonic() - released
        later = timed_register(sock, port, "later")[0]
    assert [(a.status, a.header("retry-after")) for a, _ in during] == [(503, "5")] * 6
    assert max(seconds for _, seconds in during) < 2.0
    assert (answer.status, later.status) == (200, 200)
    assert recovered < 2.0
    assert all(len(cluster.bindings(user, DOMAIN)) == 1 for user in ("before", "later"))
