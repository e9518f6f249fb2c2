"""The aiohttp application factory and its typed state (`web.AppKey`).

    app = create_app(settings, redis, runtime=rt, producer=producer)

`wks/cli` builds the producer (a `producers.client.Producer` with `buffer_size=0`, so an
unreachable Redis surfaces as a 503 instead of a silently buffered event) and passes it in:
the rest of `wks/` never imports `producers/` or `consumers/`. Without one, a minimal
unbuffered stream publisher (same wire format) is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiohttp import web

from wks.config import Settings
from wks.http import middleware, openapi

# the keys load before the routes: a route module may import them from here
from wks.http.context import (
    LIMITER,
    OPENAPI_DOC,
    PRODUCER,
    REDIS,
    RUNTIME,
    SETTINGS,
    SHUTDOWN,
    STORE,
    Publisher,
    StreamPublisher,
)
from wks.http.ratelimit import RateLimiter
from wks.http.routes import audit, backups, ingest, state, system
from wks.store import Store

if TYPE_CHECKING:
    from wks.cli.runtime import Runtime

__all__ = ["LIMITER", "OPENAPI_DOC", "PRODUCER", "REDIS", "RUNTIME", "SETTINGS", "SHUTDOWN",
           "STORE", "Publisher", "StreamPublisher", "create_app"]

# static paths before `{executionId}` ones: aiohttp matches in registration order
ROUTE_MODULES = (system, state, ingest, audit, backups)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = await Store.open(app[SETTINGS].db_path)
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _on_shutdown(app: web.Application) -> None:
    app[SHUTDOWN].set()  # long-lived responses (SSE, ?after= waits) end now


def create_app(
    settings: Settings,
    redis: aioredis.Redis,
    *,
    runtime: Runtime | None = None,
    producer: Publisher | None = None,
) -> web.Application:
    """The API application. The read store is opened when the app starts, closed at cleanup."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=middleware.stack(),
    )
    app[SETTINGS] = settings
    app[REDIS] = redis
    app[RUNTIME] = runtime
    app[PRODUCER] = producer or StreamPublisher(redis, settings.keys)
    app[LIMITER] = RateLimiter(redis, settings.keys, *settings.rate_limit)
    app[SHUTDOWN] = asyncio.Event()
    app.cleanup_ctx.append(_store_ctx)
    app.on_shutdown.append(_on_shutdown)
    for module in ROUTE_MODULES:
        app.add_routes(module.routes)
    app[OPENAPI_DOC] = openapi.document(ROUTE_MODULES)
    return app
