"""An OPTIONS echo served by N worker processes, for test_workers.py.

    python -m tests.transport.worker_app WORKERS MAX_RESTARTS [HANG_AFTER_S]

Prints "READY <udp port> <tcp port>", answers every request with 200 and an
``X-Worker: <index> <pid>`` header; a BYE makes the worker that gets it crash.
"""

from __future__ import annotations

import asyncio
import os
import sys

from sipfleet.config.listen import parse_listen
from sipfleet.core.endpoint import SipEndpoint
from sipfleet.sip import Request, Response
from sipfleet.sip.builders import make_response
from sipfleet.transport import Peer, bind_for_workers, keep_only
from sipfleet.transport.workers import run_workers


class Echo:
    def __init__(self, endpoint: SipEndpoint, index: int) -> None:
        self.endpoint = endpoint
        self.index = index

    def on_request(self, request: Request, peer: Peer) -> None:
        if request.method == "BYE":
            os._exit(3)  # a crash, not a clean exit
        worker = f"{self.index} {os.getpid()}"
        response = make_response(request, 200, headers=[("X-Worker", worker)])
        self.endpoint.send_response(response, peer.reply_to)

    def on_response(self, response: Response, peer: Peer) -> None:
        pass


def main() -> None:
    workers, max_restarts = int(sys.argv[1]), int(sys.argv[2])
    hang_after = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    listen = [parse_listen("udp:127.0.0.1:0"), parse_listen("tcp:127.0.0.1:0")]
    sets = bind_for_workers(listen, workers)
    udp_port, tcp_port = (sock.getsockname()[1] for sock in sets[0])
    print(f"READY {udp_port} {tcp_port}", flush=True)

    async def worker(index: int) -> None:
        endpoint = SipEndpoint(listen, sockets=keep_only(sets, index), worker_index=index)
        endpoint.handler = Echo(endpoint, index)
        async with endpoint:
            await asyncio.Event().wait()

    sys.exit(
        run_workers(
            worker, workers, max_restarts=max_restarts, stop_timeout_s=3, hang_after_s=hang_after
        )
    )


if __name__ == "__main__":
    main()
