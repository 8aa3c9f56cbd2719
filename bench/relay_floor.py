"""The floor: the least a Python UDP relay can do for sipp's OPTIONS echo.

Requests: insert one Via line after the request line, send to the target.
Responses: cut the first Via (ours), send to the host:port of the next Via.
No parsing, no checks, one asyncio datagram endpoint on uvloop. sipfleet's relay is
measured against this (bench/relay_bench.py). It sends with the transport's sendto, as
a minimal asyncio program does; with --socket-send, on the socket itself, as sipfleet's
UDP transport does (uvloop's sendto costs more than the socket's).

    python bench/relay_floor.py --listen 127.0.0.1:0 --target 127.0.0.1:5091
Prints "READY <port>" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
from typing import Any

import uvloop


class FloorRelay(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int], via_host: str, via_port: int) -> None:
        self.target = target
        self.via = f"Via: SIP/2.0/UDP {via_host}:{via_port};branch=z9hG4bKfloor".encode()
        self.counter = itertools.count()
        self.transport: Any = None
        self.sendto: Any = None  # the transport's, unless set to the socket's

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.sendto = self.sendto or transport.sendto

    def datagram_received(self, data: bytes, addr: Any) -> None:
        end = data.find(b"\r\n") + 2
        if data.startswith(b"SIP/2.0 "):
            # Our Via opens the first header line, alone or followed by ", <client's Via>"
            # (sipp's UAS joins the Vias into one line).
            ours_end = data.find(b"\r\n", end)
            comma = data.find(b", ", end, ours_end)
            if comma == -1:
                rest = data[ours_end + 2 :]
                start = rest.find(b"Via: SIP/2.0/UDP ") + 17
            else:
                rest = b"Via: " + data[comma + 2 :]
                start = 17
            host, _, port = rest[start : rest.find(b";", start)].partition(b":")
            self.sendto(data[:end] + rest, (host.decode(), int(port)))
        else:
            line = self.via + str(next(self.counter)).encode() + b"\r\n"
            self.sendto(data[:end] + line + data[end:], self.target)


async def main(listen: tuple[str, int], target: tuple[str, int], socket_send: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    sock.bind(listen)
    host, port = sock.getsockname()
    loop = asyncio.get_running_loop()
    relay = FloorRelay(target, host, port)
    if socket_send:
        sock.setblocking(False)
        relay.sendto = sock.sendto
    await loop.create_datagram_endpoint(lambda: relay, sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"READY {port}", flush=True)
    await stop.wait()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=hostport, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=hostport, required=True)
    parser.add_argument("--socket-send", action="store_true", help="send on the socket")
    args = parser.parse_args()
    uvloop.run(main(args.listen, args.target, args.socket_send))
