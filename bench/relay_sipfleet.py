"""The same relay built on sipfleet: SipEndpoint + StatelessForwarder (uvloop).

Every request is parsed and forwarded to the target per RFC 3261 §16.11 (Max-Forwards,
received/rport, our Via with a stateless branch); every response is parsed, checked to
carry our Via, and forwarded to the next Via.

    python bench/relay_sipfleet.py --listen 127.0.0.1:0 --target 127.0.0.1:5091
    python bench/relay_sipfleet.py --workers 2 ...   # SO_REUSEPORT, datagrams at random
Prints "READY <port>" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.stateless import StatelessForwarder, StatelessRelay
from sipfleet.transport import Destination, bind_all, bind_for_workers, keep_only, run
from sipfleet.transport.sockets import spread_at_random
from sipfleet.transport.workers import run_workers


async def serve(sockets: list[socket.socket], target: tuple[str, int], index: int = 0) -> None:
    endpoint = SipEndpoint([], sockets=sockets, worker_index=index)
    endpoint.handler = StatelessRelay(StatelessForwarder(endpoint), Destination("udp", *target))
    async with endpoint:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(listen: tuple[str, int], target: tuple[str, int], workers: int) -> int:
    address = ListenAddress("udp", *listen)
    if workers == 1:
        sockets = bind_all([address])
        print(f"READY {sockets[0].getsockname()[1]}", flush=True)
        run(serve(sockets, target))
        return 0
    sets = bind_for_workers([address], workers)
    spread_at_random(sets[0][0], workers)  # one sipp peer: spread by datagram, not by hash
    print(f"READY {sets[0][0].getsockname()[1]}", flush=True)
    return run_workers(lambda index: serve(keep_only(sets, index), target, index), workers)


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=hostport, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=hostport, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sys.exit(main(args.listen, args.target, args.workers))
