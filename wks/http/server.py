"""Running the application inside a larger process: `AppRunner` + `TCPSite` until stopped.

Requests aiohttp's HTTP parser refuses (a line over 8190 bytes, an unknown method, a control
character in a header, a bad Content-Length, an unsupported Content-Encoding) never reach the
application's middleware: aiohttp answers them from `RequestHandler.handle_error`, in plain
text that quotes the offending bytes. `JsonErrorRunner` answers them as every other error,
`{"success": false, "error": ...}`, naming the fault without echoing the request. aiohttp
has no public hook for this (aio-libs/aiohttp#3287): the runner's `_make_server` (abstract in
`BaseRunner`, so every runner has one) wraps the server it builds in one whose connections
use `JsonErrorHandler`; `handle_error`'s signature has been the same since aiohttp 3.0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import http_exceptions as hx
from aiohttp import web
from loguru import logger

from wks.http.errors import error_response

SHUTDOWN_TIMEOUT = 5.0  # seconds in-flight requests get once the listener is closed

# most specific first: each is a subclass of BadHttpMessage
_PARSE_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (hx.LineTooLong, 400, "request line or header too long"),
    (hx.BadHttpMethod, 400, "unsupported HTTP method"),
    (hx.ContentEncodingError, 415, "unsupported Content-Encoding (use gzip or deflate)"),
    (hx.InvalidHeader, 400, "invalid header"),
    (hx.InvalidURLError, 400, "invalid URL"),
)


def parse_error(status: int, exc: BaseException | None) -> tuple[int, str]:
    """(status, message) for a request aiohttp refused; never any of the request's bytes."""
    for kind, code, message in _PARSE_ERRORS:
        if isinstance(exc, kind):
            return code, message
    if status == 504:
        return status, "request timed out"
    if status >= 500:
        return status, "internal error"
    return status, "malformed HTTP request"


class JsonErrorHandler(web.RequestHandler):
    """A connection's protocol whose own error answers are the API's JSON errors."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own logs the error and refuses when a response was already started
        super().handle_error(request, status, exc, message)
        code, text = parse_error(status, exc)
        response = error_response(code, text)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """An `AppRunner` whose connections answer parser errors as JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _JsonErrorServer(
            server.request_handler, request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation, **server._kwargs)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `app` on host:port (0: a free port) until `stop` is set, then close cleanly."""
    runner = JsonErrorRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        url = f"http://{host}:{runner.addresses[0][1]}"
        logger.info("API listening on {}", url)
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
        logger.info("API stopping")
    finally:
        await runner.cleanup()
