"""What the LB pays for a new REGISTER: relayed, or refused for an overloaded registrar
(RFC 7339), from its bytes (the fast path) or parsed (the present path).

    .venv/bin/python bench/refusal_cost.py [--count 10000]

An LB worker composed in-process (roles/lb.compose) on loopback sockets, a registrar
pool target that has asked for every new REGISTER to be refused (or none), and sipp's
REGISTER (bench/sipp/reg_auth_uac.xml, its first request) from one phone socket. Each
figure is wall time per REGISTER handed to the worker's endpoint, sending included
(loopback), best of three rounds; run it on an idle machine."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipfleet.config import config_from_dict
from sipfleet.config.listen import parse_listen
from sipfleet.core.lb.balancer import Balancer
from sipfleet.native import status
from sipfleet.roles.lb import WorkerSockets, compose, sides_of
from sipfleet.sip import parse_message
from sipfleet.storage import LbTarget, Storage
from sipfleet.transport.base import Peer
from sipfleet.transport.sockets import bind_all


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return sock


def drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(70000)
        except BlockingIOError:
            return


def register(port: int, n: int) -> bytes:
    here = f"127.0.0.1:{port}"
    return (
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-{n}-1-0\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:u{n}@127.0.0.1>;tag=1SIPpTag00{n}\r\n"
        f"To: <sip:u{n}@127.0.0.1>\r\n"
        f"Call-ID: {n}-4242@127.0.0.1\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{n}@{here}>\r\n"
        "Expires: 3600\r\n"
        "User-Agent: sipp-bench\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def per_request(
    handle: Callable[[bytes], None], datas: list[bytes], *sinks: socket.socket
) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for at, data in enumerate(datas):
            handle(data)
            if at % 64 == 0:
                for sink in sinks:
                    drain(sink)
        best = min(best, (time.perf_counter() - started) / len(datas))
        for sink in sinks:
            drain(sink)
    return best * 1e6


async def main(count: int) -> None:
    phone, registrar, proxy = udp_socket(), udp_socket(), udp_socket()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = config_from_dict(
        {
            "node": {"cluster_secret": "refusal-bench"},
            "lb": {"listen": [f"udp:127.0.0.1:{port}"], "keepalive": False},
            "edge": {"rate_per_s": 0},
        }
    )
    sockets = bind_all(sides_of(config).listen)
    control = bind_all([parse_listen("udp:127.0.0.1:0")])[0]
    own = WorkerSockets(0, [*sockets, control], {0: control.getsockname()[:2]})
    worker = compose(config, cast(Storage, None), own, 1)
    worker.pools.update(
        [
            LbTarget(1, "proxy", f"sip:127.0.0.1:{proxy.getsockname()[1]}", 1, "active"),
            LbTarget(2, "registrar", f"sip:127.0.0.1:{registrar.getsockname()[1]}", 1, "active"),
        ]
    )
    phone_port = phone.getsockname()[1]
    peer = Peer("udp", "127.0.0.1", phone_port, "127.0.0.1", port)
    datas = [register(phone_port, n) for n in range(count)]
    parse_message(datas[0])  # header names known, as a running LB knows them
    async with worker.endpoint:
        balancer = worker.endpoint.handler
        assert isinstance(balancer, Balancer)
        endpoint, fast = worker.endpoint, worker.endpoint.fast
        server = ("127.0.0.1", registrar.getsockname()[1])

        def received(data: bytes) -> None:
            endpoint.frame_received(data, peer)

        relayed = per_request(received, datas, registrar)
        balancer.loss.take(server, 100, 3600.0, 1.0, time.monotonic())
        refused_fast = per_request(received, datas, phone)
        endpoint.fast = None
        refused_parsed = per_request(received, datas, phone)
        endpoint.fast = fast
    print(f"build: {status}; {count} REGISTERs a round, best of 3, µs each")
    print(f"  relayed to the registrar (fast path: Path, flow token)    {relayed:6.1f}")
    print(f"  refused, from its bytes (fast path)                      {refused_fast:6.1f}")
    print(f"  refused, parsed (present path)                           {refused_parsed:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().count))
