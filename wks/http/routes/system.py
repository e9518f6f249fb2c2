"""Operations and auth routes: /health, /metrics, /openapi.json, /auth/me, /auth/logout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wks import metrics
from wks.http import health
from wks.http import openapi as oa
from wks.http.auth import principal_of, revoke
from wks.http.context import OPENAPI_DOC, REDIS, RUNTIME, SETTINGS, STORE
from wks.http.errors import ApiError
from wks.redis import REDIS_DOWN

routes = web.RouteTableDef()


async def _refresh_gauges(app: web.Application) -> None:
    """Gauges derived from stored state at scrape time (never counters a redelivery could
    bump twice): executions by status, stale running ones, and whether Redis answers."""
    settings = app[SETTINGS]
    stale_before = int(time.time() * 1000) - int(settings.stale_after * 1000)
    try:
        rows = await app[STORE].fetchall(
            "SELECT status, COUNT(*), SUM(status IN ('pending', 'running') AND updated_at < ?)"
            " FROM executions GROUP BY status", (stale_before,))
    except Exception:  # the store's trouble shows in /health; metrics still answer
        rows = None
    if rows is not None:
        counts = dict.fromkeys(("pending", "running", "completed", "failed", "cancelled"), 0)
        stale = 0
        for status, count, stale_n in rows:
            counts[status] = count
            stale += stale_n or 0
        for status, count in counts.items():
            metrics.EXECUTIONS.labels(status).set(count)
        metrics.EXECUTIONS_STALE.set(stale)
    try:
        async with asyncio.timeout(1.0):
            await app[REDIS].ping()
        metrics.REDIS_UP.set(1)
    except Exception:  # down, stalled or refusing: all mean "not up" for this gauge
        metrics.REDIS_UP.set(0)


@routes.get("/health")
async def get_health(request: web.Request) -> web.Response:
    app = request.app
    body, status = await health.report(app[STORE], app[REDIS], app[SETTINGS], app[RUNTIME])
    return web.json_response(body, status=status)


@routes.get("/metrics")
async def get_metrics(request: web.Request) -> web.Response:
    await _refresh_gauges(request.app)
    return web.Response(body=generate_latest(metrics.REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json")
async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOC])


@routes.get("/auth/me")
async def me(request: web.Request) -> web.Response:
    p = principal_of(request)
    return web.json_response({"success": True, "user": {"sub": p.sub, "role": p.role,
                                                        "expiresAt": p.exp * 1000}})


@routes.post("/auth/logout")
async def logout(request: web.Request) -> web.Response:
    try:
        await revoke(request.app[SETTINGS], request.app[REDIS], principal_of(request))
    except REDIS_DOWN as exc:
        raise ApiError(503, "session store unreachable; retry later") from exc
    return web.json_response({"success": True, "message": "Logged out"})


_CHECK: dict[str, Any] = {"type": "object", "required": ["status"],
          "properties": {"status": {"enum": ["healthy", "degraded", "unhealthy"]}}}

OPENAPI: dict[str, Any] = {
    "/health": {"get": {
        "summary": "Health of the database, Redis, disk and consumer groups (no token)",
        "operationId": "health",
        "security": [],
        "responses": {
            **{code: oa.ok(text, "Health") for code, text in
               (("200", "healthy or degraded"), ("503", "unhealthy"))},
        },
    }},
    "/metrics": {"get": {
        "summary": "Prometheus metrics (no token)",
        "operationId": "metrics",
        "security": [],
        "responses": {"200": {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }},
    "/openapi.json": {"get": {
        "summary": "This document",
        "operationId": "openapi",
        "responses": {"200": oa.ok("OpenAPI 3.1 document", {"type": "object"}),
                      **oa.errors()},
    }},
    "/auth/me": {"get": {
        "summary": "The caller's subject and role",
        "operationId": "authMe",
        "responses": {"200": oa.ok("The caller", {
            "type": "object", "required": ["success", "user"], "additionalProperties": False,
            "properties": {"success": {"const": True}, "user": {
                "type": "object", "required": ["sub", "role", "expiresAt"],
                "additionalProperties": False,
                "properties": {"sub": {"type": "string"}, "role": {"enum": ["admin", "user"]},
                               "expiresAt": {"type": "integer"}}}},
        }), **oa.errors()},
    }},
    "/auth/logout": {"post": {
        "summary": "Revoke the caller's session (its token stops working at once)",
        "operationId": "authLogout",
        "responses": {"200": oa.ok("Logged out", {
            "type": "object", "required": ["success", "message"],
            "additionalProperties": False,
            "properties": {"success": {"const": True}, "message": {"type": "string"}},
        }), **oa.errors()},
    }},
}

OPENAPI_COMPONENTS: dict[str, Any] = {
    "Health": {
        "type": "object", "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["healthy", "degraded", "unhealthy"]},
            "checks": {
                "type": "object",
                "required": ["database", "redis", "diskSpace", "consumers"],
                "properties": {
                    "database": _CHECK,
                    "redis": {**_CHECK, "required": ["status", "mode"], "properties": {
                        **_CHECK["properties"], "mode": {"enum": ["managed", "external"]}}},
                    "diskSpace": _CHECK,
                    "consumers": _CHECK,
                    "streams": _CHECK,
                },
            },
        },
    },
}
