"""The event loop a storage object runs on, remembered.

On Python 3.11 each ``asyncio.get_running_loop()`` is a ``getpid`` system call (its check
that the loop belongs to this process), and so is what asks for it (``create_task``,
``current_task()`` without a loop). The batchers want the loop three or four times for
every key, the network executor twice for every query: together 2 % of the proxy's
samples at 1,200 calls/s. A storage object serves one process (its connections cannot
cross a fork); a closed loop (a command's next ``asyncio.run``) is asked for again.
"""

from __future__ import annotations

import asyncio


class OnItsLoop:
    _loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop
