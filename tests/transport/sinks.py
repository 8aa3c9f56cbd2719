"""A FrameSink that records what a transport delivers."""

from __future__ import annotations

import asyncio

from sipfleet.sip import ParseError
from sipfleet.transport import Destination, Peer

TIMEOUT = 2.0


class RecordingSink:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[bytes, Peer]] = asyncio.Queue()
        self.rejected: list[tuple[ParseError, Peer]] = []
        self.failed: list[tuple[Destination, Exception]] = []
        self.fail_next = False

    def frame_received(self, data: bytes, peer: Peer) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("handler bug")
        self.frames.put_nowait((data, peer))

    def frame_rejected(self, error: ParseError, peer: Peer) -> None:
        self.rejected.append((error, peer))

    def send_failed(self, destination: Destination, error: Exception) -> None:
        self.failed.append((destination, error))

    async def frame(self) -> tuple[bytes, Peer]:
        return await asyncio.wait_for(self.frames.get(), TIMEOUT)
