"""Listening sockets (transport/sockets.py): a taken address is refused, naming it; the
workers' datagrams are dealt so that one transaction's responses stay in one worker."""

from __future__ import annotations

import errno
import select
import socket
from collections import Counter
from collections.abc import Iterator

import pytest

from sipfleet.config.listen import ListenAddress, Transport
from sipfleet.transport.sockets import (
    bind_all,
    bind_for_workers,
    listen_address_of,
    spread_at_random,
)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_second_copy_of_a_role_with_workers_is_refused_not_let_in(transport: Transport) -> None:
    """SO_REUSEPORT would let a second process bind the same address and silently take
    part of the traffic; the first bind of each address is made without it."""
    first = bind_for_workers([ListenAddress(transport, "127.0.0.1", 0)], 2)
    try:
        taken = listen_address_of(first[0][0])
        for attempt in (lambda: bind_for_workers([taken], 2), lambda: bind_all([taken])):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EADDRINUSE
            assert str(taken) in str(refused.value)
            assert "another copy of this role" in str(refused.value)
    finally:
        for sock in (s for group in first for s in group):
            sock.close()


def test_the_workers_share_a_free_address() -> None:
    sets = bind_for_workers([ListenAddress("udp", "127.0.0.1", 0)], 3)
    try:
        ports = {listen_address_of(group[0]).port for group in sets}
        assert len(ports) == 1
    finally:
        for sock in (s for group in sets for s in group):
            sock.close()


WORKERS = 3


@pytest.fixture
def workers() -> Iterator[list[socket.socket]]:
    """Three UDP sockets of one SO_REUSEPORT group, as the LB's workers bind them, with
    the dealing program attached."""
    sets = bind_for_workers([ListenAddress("udp", "127.0.0.1", 0)], WORKERS)
    group = [sockets[0] for sockets in sets]
    spread_at_random(group[0], WORKERS)
    yield group
    for sock in group:
        sock.close()


def response(status: str, transaction: int, to_tag: str = "", vias: str = "lines") -> bytes:
    """A response as the proxy sends it back through the LB: the LB's Via on top (its
    branch as builders.stateless_branch writes it). ``vias``: "lines" as the proxy writes
    its own 100 Trying, "commas" as a UAS may write the Vias it copies (the proxy relays
    them as they came), "compact" likewise in the compact form."""
    ours = f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-sf5c1e0a77d2b9.{transaction}-uac-0;sfi=u0"
    client = f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{transaction}abc;rport=5060"
    via_lines = {
        "lines": f"Via: {ours}\r\nVia: {client}\r\n",
        "commas": f"Via: {ours}, {client}\r\n",
        "compact": f"v: {ours},{client}\r\n",
    }[vias]
    return (
        f"SIP/2.0 {status}\r\n{via_lines}"
        f"From: <sip:caller@example.com>;tag=f{transaction}\r\n"
        f"To: <sip:callee@example.com>{to_tag}\r\n"
        f"Call-ID: call-{transaction}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def deliveries(group: list[socket.socket], datagrams: list[bytes]) -> list[tuple[int, bytes]]:
    """Send each datagram to the group's address; (worker, datagram) in arrival order."""
    address = group[0].getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in datagrams:
            sender.sendto(datagram, address)
    received: list[tuple[int, bytes]] = []
    while len(received) < len(datagrams):
        ready, _, _ = select.select(group, [], [], 2.0)
        assert ready, f"{len(datagrams) - len(received)} datagrams never arrived"
        for sock in ready:
            received.append((group.index(sock), sock.recv(65535)))
    return received


def test_the_responses_of_one_transaction_reach_one_worker_in_order(
    workers: list[socket.socket],
) -> None:
    """A 200 dealt to another worker than the 180 before it could overtake it; each
    transaction's responses go to one worker, and the transactions to all of them. The
    proxy writes its own 100 Trying; the 180 and the 200 are the UAS's, their Vias
    written as it chose (one transaction in three on one line, one in three compact)."""
    ways = ("lines", "commas", "compact")
    sent = [
        response(status, n, tag, vias)
        for n in range(90)
        for status, tag, vias in (
            ("100 Trying", "", "lines"),
            ("180 Ringing", ";tag=t", ways[n % 3]),
            ("200 OK", ";tag=t", ways[n % 3]),
        )
    ]
    by_transaction: dict[bytes, list[tuple[int, bytes]]] = {}
    for worker, datagram in deliveries(workers, sent):
        call_id = datagram.split(b"Call-ID: ")[1].split(b"\r")[0]
        by_transaction.setdefault(call_id, []).append((worker, datagram[8:11]))
    assert len(by_transaction) == 90
    for call_id, arrived in by_transaction.items():
        assert len({worker for worker, _ in arrived}) == 1, call_id
        assert [status for _, status in arrived] == [b"100", b"180", b"200"], call_id
    per_worker = Counter(arrived[0][0] for arrived in by_transaction.values())
    assert len(per_worker) == WORKERS, per_worker
    assert min(per_worker.values()) >= 15, per_worker


def test_requests_and_odd_responses_are_dealt_at_random(workers: list[socket.socket]) -> None:
    """Requests (one client's retransmissions alike), a response whose status line is too
    long to look past, one without our branch on top, and bytes that are not SIP: every
    worker gets some."""
    options = (
        b"OPTIONS sip:lb.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\r\n"
    )
    long_reason = response("500 " + "Server Internal Error " * 10, 1)
    not_ours = response("200 OK", 2).replace(b"z9hG4bK-sf", b"z9hG4bK-xy")
    for datagram in (options, long_reason, not_ours, b"\r\n\r\n" * 50):
        per_worker = Counter(worker for worker, _ in deliveries(workers, [datagram] * 90))
        assert len(per_worker) == WORKERS, (datagram[:20], per_worker)
