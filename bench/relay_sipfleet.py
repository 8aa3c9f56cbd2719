"""The same relay built on sipfleet: SipEndpoint + StatelessForwarder (uvloop).

Every request is parsed and forwarded to the target per RFC 3261 §16.11 (Max-Forwards,
received/rport, our Via with a stateless branch); every response is parsed, checked to
carry our Via, and forwarded to the next Via.

    python bench/relay_sipfleet.py --listen 127.0.0.1:0 --target 127.0.0.1:5091
Prints "READY <port>" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from sipfleet.config.listen import ListenAddress
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.core.stateless import StatelessForwarder
from sipfleet.sip import Request, Response
from sipfleet.transport import Destination, Peer, run


class Relay:
    def __init__(self, forwarder: StatelessForwarder, target: Destination) -> None:
        self.forwarder = forwarder
        self.target = target

    def on_request(self, request: Request, peer: Peer) -> None:
        self.forwarder.forward_request(request, peer, self.target)

    def on_response(self, response: Response, peer: Peer) -> None:
        self.forwarder.forward_response(response, peer)


async def main(listen: tuple[str, int], target: tuple[str, int]) -> None:
    endpoint = SipEndpoint([ListenAddress("udp", *listen)])
    forwarder = StatelessForwarder(endpoint)
    endpoint.handler = Relay(forwarder, Destination("udp", *target))
    async with endpoint:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"READY {endpoint.addresses[0].port}", flush=True)
        await stop.wait()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=hostport, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=hostport, required=True)
    args = parser.parse_args()
    run(main(args.listen, args.target))
