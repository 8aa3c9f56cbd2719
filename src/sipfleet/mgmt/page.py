"""The status page: one HTML shell, a script and a style sheet, all served by the API.

The shell holds no data (it is public even when the API needs a token); the script polls
the JSON endpoints every few seconds, with the token taken from the page's fragment
(``/#token=…``: a fragment never leaves the browser, so it is in no server log).
Nothing comes from elsewhere: the Content-Security-Policy allows only this origin.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

STATIC = {
    "status.js": "text/javascript",
    "status.css": "text/css",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("sipfleet.mgmt").joinpath("static", name).read_bytes()


def add_page(app: web.Application) -> None:
    """``GET /`` and ``GET /static/{name}``, read once from the package."""
    files = {name: (_read(name), kind) for name, kind in STATIC.items()}
    shell = _read("status.html")

    async def page(request: web.Request) -> web.Response:
        return _response(shell, "text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound()
        return _response(*found)

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)


def _response(body: bytes, kind: str) -> web.Response:
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=SECURITY_HEADERS)
