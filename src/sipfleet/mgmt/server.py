"""The management HTTP server of one role: an aiohttp application on ``[mgmt] listen``.

The socket is bound by whoever starts the role (`sipfleet run`), before any worker is
forked: so the port is known at once (port 0: any free one, written into the role's
ready file for `sipfleet up`), a restarted worker 0 serves on the same socket, and the
address is taken only once. The role serves it from worker 0 (``ManagementServer``), where
its pools, LCR and counters live.

Off loopback the API needs ``mgmt.token`` (the config refuses to load without one); with a
token every data request carries ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Middleware

from sipfleet.config import Config
from sipfleet.mgmt.api import add_routes, bearer_auth, json_errors
from sipfleet.mgmt.page import add_page
from sipfleet.mgmt.view import RoleView

BACKLOG = 64
SHUTDOWN_S = 1.0  # a role stopping waits this long at most for requests under way


@dataclass(frozen=True)
class Listener:
    """The API's bound, listening TCP socket and what a client needs to reach it."""

    sock: socket.socket
    token: str

    @property
    def host(self) -> str:
        return str(self.sock.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.sock.close()


def open_listener(config: Config) -> Listener | None:
    """Bind ``mgmt.listen`` (None when it is empty: no API). Raises OSError (a port in
    use) naming the setting."""
    address = config.mgmt.address
    if address is None:
        return None
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"mgmt.listen {config.mgmt.listen}: {exc.strerror}") from None
    sock.setblocking(False)
    return Listener(sock, config.mgmt.token)


def build_app(view: RoleView, token: str = "") -> web.Application:
    middlewares: list[Middleware] = [json_errors]
    if token:
        middlewares.append(bearer_auth(token))
    app = web.Application(middlewares=middlewares)
    add_routes(app, view)
    add_page(app)
    return app


class ManagementServer:
    """Serves ``view`` on ``listener`` while entered (``async with``)."""

    def __init__(self, view: RoleView, listener: Listener) -> None:
        self.view = view
        self.listener = listener
        self._runner = web.AppRunner(
            build_app(view, listener.token), access_log=None, shutdown_timeout=SHUTDOWN_S
        )

    async def __aenter__(self) -> ManagementServer:
        await self._runner.setup()
        await web.SockSite(self._runner, self.listener.sock).start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()
