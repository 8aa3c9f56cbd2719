"""Worker processes: N copies of one role, each with its own event loop.

    sets = bind_for_workers(listen, workers)          # in the supervisor, before forking
    async def worker(index: int) -> None:
        endpoint = SipEndpoint(listen, handler, sockets=keep_only(sets, index),
                               worker_index=index)
        async with endpoint:
            await asyncio.Event().wait()
    sys.exit(run_workers(worker, workers))

The supervisor forks the workers (they inherit the bound sockets: with SO_REUSEPORT the
kernel spreads datagrams and new TCP connections over them), forwards SIGTERM/SIGINT as
a clean shutdown (workers get ``stop_timeout_s`` to finish, then SIGKILL) and restarts a
worker that dies, at most ``max_restarts`` times within ``restart_window_s``; past that
it stops everything and returns 1.

A worker whose event loop stops turning (a deadlock, a blocking call that never returns)
is as useless as a dead one but does not die: each worker's loop sends a heartbeat every
``HEARTBEAT_S``; one silent for ``hang_after_s`` is killed and so restarted. Under
systemd (``Type=notify``, ``WatchdogSec``) the supervisor feeds the watchdog only while
every worker's heartbeat is fresh. A TCP connection lives in the worker that accepted
it: a request for that flow must be sent from that worker (connection ids say which).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from multiprocessing.process import BaseProcess
from typing import Any

from sipfleet.logcontext import set_worker
from sipfleet.transport.loop import run
from sipfleet.transport.systemd import notify, watchdog_period

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0
HANG_AFTER_S = 10.0  # far past any pause the collector or a load peak makes
START_GRACE_S = 30.0  # a worker opening its database and tables before its loop turns

WorkerMain = Callable[[int], Coroutine[Any, Any, None]]


def run_workers(
    worker_main: WorkerMain,
    count: int,
    *,
    max_restarts: int = 5,
    restart_window_s: float = 60.0,
    stop_timeout_s: float = 5.0,
    hang_after_s: float = HANG_AFTER_S,
) -> int:
    """Run ``worker_main(index)`` in ``count`` processes until SIGTERM/SIGINT.

    Returns the exit status for the supervisor: 0 after a requested stop or when every
    worker finished normally, 1 when workers kept crashing.
    """
    supervisor = _Supervisor(
        worker_main, count, max_restarts, restart_window_s, stop_timeout_s, hang_after_s
    )
    return supervisor.run()


def worker_entry(worker_main: WorkerMain, index: int, heartbeat: socket.socket) -> None:
    """In a worker: a fresh event loop, SIGTERM/SIGINT cancel ``worker_main`` cleanly,
    and the loop beats on ``heartbeat`` while it turns."""
    set_worker(index)  # its log lines say which worker wrote them
    signal.set_wakeup_fd(-1)  # the supervisor's, inherited through fork
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    # The supervisor relays SIGHUP (reload); a worker that does not reload anything
    # must not die of it. A role that reloads installs its own handler in its loop.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    run(_until_signalled(worker_main(index), heartbeat))


async def _until_signalled(main: Coroutine[Any, Any, None], heartbeat: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    beating = asyncio.ensure_future(_beat(heartbeat))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        beating.cancel()


async def _beat(heartbeat: socket.socket) -> None:
    heartbeat.setblocking(False)
    while True:
        with contextlib.suppress(OSError):  # a full pipe: the supervisor has beats to read
            heartbeat.send(b".")
        await asyncio.sleep(HEARTBEAT_S)


class _Supervisor:
    def __init__(
        self,
        worker_main: WorkerMain,
        count: int,
        max_restarts: int,
        restart_window_s: float,
        stop_timeout_s: float,
        hang_after_s: float,
    ) -> None:
        self.worker_main = worker_main
        self.count = count
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.stop_timeout_s = stop_timeout_s
        self.hang_after_s = hang_after_s
        self.heartbeats: dict[int, socket.socket] = {}  # worker index -> read end
        # when each worker last beat; a new one counts from START_GRACE_S ahead until
        # its first beat
        self.last_beat: dict[int, float] = {}
        self.watchdog = watchdog_period()
        self.context = multiprocessing.get_context("fork")  # workers inherit the sockets
        self.workers: dict[int, BaseProcess] = {}
        self.restarts: list[float] = []
        self.stopping = False

    def run(self) -> int:
        wakeup_read, wakeup_write = socket.socketpair()
        wakeup_write.setblocking(False)
        previous = self._install_signals(wakeup_write)
        try:
            for index in range(self.count):
                self._start(index)
            return self._watch(wakeup_read)
        finally:
            if self.stopping:
                notify("STOPPING=1")
            self._stop_all()
            self._restore_signals(previous)
            wakeup_read.close()
            wakeup_write.close()

    def _install_signals(self, wakeup: socket.socket) -> dict[int, Any]:
        previous: dict[int, Any] = {
            signum: signal.getsignal(signum)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._relay)
        signal.set_wakeup_fd(wakeup.fileno(), warn_on_full_buffer=False)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(-1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _relay(self, signum: int, frame: object) -> None:
        """SIGHUP (reload, such as the LB's TLS certificate) goes to every worker."""
        for process in self.workers.values():
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _start(self, index: int) -> None:
        beats, heartbeat = socket.socketpair()
        process = self.context.Process(
            target=worker_entry,
            args=(self.worker_main, index, heartbeat),
            name=f"sipfleet-worker-{index}",
        )
        process.start()
        heartbeat.close()  # the worker's end
        beats.setblocking(False)
        old = self.heartbeats.pop(index, None)
        if old is not None:
            old.close()
        self.heartbeats[index] = beats
        self.last_beat[index] = time.monotonic() + START_GRACE_S
        self.workers[index] = process
        log.info("worker %d started (pid %s)", index, process.pid)

    def _watch(self, wakeup: socket.socket) -> int:
        while not self.stopping and self.workers:
            sentinels = {process.sentinel: index for index, process in self.workers.items()}
            beats = {sock: index for index, sock in self.heartbeats.items()}
            ready = multiprocessing.connection.wait(
                [*sentinels, wakeup, *beats], timeout=HEARTBEAT_S
            )
            if wakeup in ready:
                with contextlib.suppress(BlockingIOError):
                    wakeup.recv(64)
            for item in ready:
                if isinstance(item, socket.socket) and item in beats:
                    self._heard(item, beats[item])
            for item in ready:
                index = sentinels.get(item) if isinstance(item, int) else None
                if index is not None and not self.stopping and not self._handle_exit(index):
                    return 1
            self._kill_the_hung()
            if self.watchdog is not None and self._all_alive():
                notify("WATCHDOG=1")
        return 0

    def _heard(self, beats: socket.socket, index: int) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionError):
            if beats.recv(256):
                self.last_beat[index] = time.monotonic()

    def _all_alive(self) -> bool:
        now = time.monotonic()
        return all(now - self.last_beat.get(i, now) < self.hang_after_s for i in self.workers)

    def _kill_the_hung(self) -> None:
        """A worker whose loop has not beaten for ``hang_after_s`` is killed; its exit
        is handled (and it restarted) like any other death."""
        now = time.monotonic()
        for index, process in self.workers.items():
            silent = now - self.last_beat.get(index, now)
            if silent >= self.hang_after_s and process.is_alive() and process.pid is not None:
                log.error("worker %d: its loop has not turned for %.0f s: killed", index, silent)
                self.last_beat[index] = now + START_GRACE_S  # once
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)

    def _handle_exit(self, index: int) -> bool:
        """A worker ended on its own: restart it unless it finished cleanly or workers
        crash too often. False means give up."""
        process = self.workers.pop(index)
        process.join()
        if process.exitcode == 0:
            log.info("worker %d finished", index)
            return True
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.restart_window_s]
        if len(self.restarts) >= self.max_restarts:
            log.error(
                "worker %d died (exit %s); %d restarts within %.0f s: giving up",
                index,
                process.exitcode,
                len(self.restarts),
                self.restart_window_s,
            )
            return False
        self.restarts.append(now)
        log.warning("worker %d died (exit %s), restarting", index, process.exitcode)
        self._start(index)
        return True

    def _stop_all(self) -> None:
        for process in self.workers.values():
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for process in self.workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not stop in time: killed", process.name)
                process.kill()
                process.join()
        self.workers.clear()
        for beats in self.heartbeats.values():
            beats.close()
        self.heartbeats.clear()
