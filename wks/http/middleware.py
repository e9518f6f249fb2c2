"""Middleware, outermost first: metrics, errors, body cap, authentication, rate limit.

Every 4xx/5xx leaves as `{"success": false, "error": "<message>"}`: aiohttp's own
HTTPExceptions (404, 405, 413), bodies it cannot decode (400) and unexpected exceptions (500,
logged with the request id, never echoed) included, so no stack trace or server path reaches a
client. Requests its parser refuses before any handler runs are answered by `wks.http.server`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.typedefs import Middleware
from loguru import logger

from wks import metrics
from wks.http.auth import DEGRADED_WARNING, PRINCIPAL, REDIS_TIMEOUT, authenticate
from wks.http.context import LIMITER, REDIS, SETTINGS
from wks.http.errors import ApiError, error_response
from wks.http.ratelimit import Verdict
from wks.redis import REDIS_UNWELL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID = web.RequestKey("request_id", str)
SESSION_CHECKED = web.RequestKey("session_checked", bool)
VERDICT: web.RequestKey[Verdict | None] = web.RequestKey("ratelimit_verdict")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_CLOSED = 499  # the status counted for a request whose client left before its answer
PUBLIC = frozenset({"/health", "/metrics"})  # route templates served without a token
_KEEP_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
# request ids need to be unique, not secret: a random per-process part and a counter (16 hex
# characters, as before) instead of a uuid4, whose os.urandom call showed in request profiles
_ID_NODE = secrets.token_hex(4)
_ID_SEQ = itertools.count()


def route_template(request: web.Request) -> str:
    """The matched route's template (`/api/workflow-state/{executionId}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect passes through the error middleware
        status = exc.status
        raise
    finally:
        route = route_template(request)
        metrics.HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        metrics.HTTP_SECONDS.labels(request.method, route).observe(time.perf_counter() - started)


@web.middleware
async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    # a caller's id is kept for tracing across services, but only if it is a plain token
    request_id = (given if _REQUEST_ID.match(given)
                  else f"{_ID_NODE}{next(_ID_SEQ) & 0xFFFFFFFF:08x}")
    request[REQUEST_ID] = request_id
    try:
        with logger.contextualize(request_id=request_id):
            response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.message, exc.headers, exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {h: exc.headers[h] for h in _KEEP_HEADERS if h in exc.headers}
        response = error_response(exc.status, exc.reason, headers)
    except web.RequestPayloadError as exc:  # raised while a handler reads the body
        response = error_response(400, _payload_error(exc))
        response.force_close()  # the rest of the body cannot be parsed: nothing can follow it
        # and nothing more is read of it: aiohttp would read on after the answer, meet the
        # same error again and log it as unhandled
        request.content.feed_eof()
    except (ConnectionResetError, TimeoutError) as exc:
        if isinstance(exc, ConnectionResetError) and (
                request.transport is None or request.transport.is_closing()):
            # a write found the client gone: nobody to answer, and no server error (counted
            # as 499, "client closed request", as proxies do); aiohttp drops the answer.
            # A timeout stays a 503 even then: clients leave because the server is slow.
            return web.Response(status=CLIENT_CLOSED)
        logger.bind(request_id=request_id).warning("{} {} timed out: {}",
                                                   request.method, request.path, exc)
        response = error_response(503, "temporarily unavailable; retry later")
    except Exception as exc:
        logger.opt(exception=exc).bind(request_id=request_id).error(
            "{} {} failed: {}", request.method, request.path, type(exc).__name__)
        response = error_response(500, f"internal error (request id {request_id})")
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", request_id)
    return response


def _payload_error(exc: web.RequestPayloadError) -> str:
    """What was wrong with a body aiohttp could not read, without echoing any of it."""
    if isinstance(exc.__cause__, ContentEncodingError):
        return "request body does not match its Content-Encoding (cannot decompress it)"
    return "request body is malformed or incomplete"


@web.middleware
async def body_cap_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    # a declared length over the cap is refused before reading; a chunked body is capped by
    # the application's client_max_size while it is read
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body over the {limit} byte limit")
    return await handler(request)


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.route.resource is None or route_template(request) in PUBLIC:
        return await handler(request)  # unknown paths answer 404, public ones need no token
    app = request.app
    principal, checked, verdict = await authenticate(
        request, app[SETTINGS], app[REDIS], app.get(LIMITER))
    request[SESSION_CHECKED] = checked
    request[VERDICT] = verdict  # already counted with the session check: one round trip
    request[PRINCIPAL] = principal  # typed key: no per-request catch_warnings for a str key
    response = await handler(request)
    if not checked and not response.prepared:
        response.headers["Warning"] = DEGRADED_WARNING
    return response


@web.middleware
async def ratelimit_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    principal = request.get(PRINCIPAL)
    if principal is None or not request.get(SESSION_CHECKED, False):
        # public route, or Redis already found down for this request: no second timeout
        return await handler(request)
    verdict = request.get(VERDICT)
    if verdict is None:  # the one-call script was refused: count with a call of its own
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                verdict = await request.app[LIMITER].hit(principal.sub)
        except REDIS_UNWELL as exc:
            # reads must survive a Redis outage; writes fail later on publish anyway
            logger.warning("rate limit not checked, Redis down: {}", exc)
            return await handler(request)
    if not verdict.allowed:
        seconds = max(1, -(-verdict.retry_after_ms // 1000))
        raise ApiError(429, "rate limit exceeded", headers={"Retry-After": str(seconds)})
    response = await handler(request)
    if not response.prepared:
        response.headers["X-RateLimit-Remaining"] = str(verdict.remaining)
    return response


def stack() -> list[Middleware]:
    """The middleware list, outermost first."""
    return [metrics_mw, errors_mw, body_cap_mw, auth_mw, ratelimit_mw]
