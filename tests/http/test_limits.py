"""Limits and error shape: body cap (413), rate limit (429), JSON errors, route metrics."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from prometheus_client import generate_latest

from tests.http.conftest import bearer, raw_http
from wks import metrics
from wks.http.auth import require_admin
from wks.http.ratelimit import RateLimiter


async def test_body_over_the_cap_is_a_json_413(make_client, make_settings, admin):
    """A declared or chunked body over max_body_bytes answers 413 JSON."""
    client = await make_client(make_settings(max_body_bytes=1024))
    resp = await client.post("/api/events", headers=admin, data=b"[" + b" " * 4096 + b"]")
    assert resp.status == 413
    assert (await resp.json())["success"] is False

    async def chunks():
        for _ in range(8):
            yield b" " * 512

    resp = await client.post("/api/events", headers={**admin, "Content-Type": "application/json"},
                             data=chunks())
    assert resp.status == 413
    assert (await resp.json())["success"] is False


async def test_rate_limit_answers_429_with_retry_after(make_client, make_settings, token):
    """Past `count` requests in the window a subject gets 429 with Retry-After; others do not."""
    client = await make_client(make_settings(rate_limit=(3, 60.0)))
    alice = bearer(await token("alice", "user"))
    statuses = [(await client.get("/auth/me", headers=alice)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    resp = await client.get("/auth/me", headers=alice)
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await resp.json()) == {"success": False, "error": "rate limit exceeded"}
    bob = bearer(await token("bob", "user"))
    assert (await client.get("/auth/me", headers=bob)).status == 200


async def test_rate_limit_is_exact_across_processes(r, settings):
    """Several limiters (as in several API processes) sharing Redis admit exactly `count`."""
    limiters = [RateLimiter(r, settings.keys, 25, 60.0) for _ in range(4)]
    verdicts = await asyncio.gather(*(lim.hit("shared") for lim in limiters for _ in range(20)))
    assert sum(v.allowed for v in verdicts) == 25
    refused = [v for v in verdicts if not v.allowed]
    assert all(0 < v.retry_after_ms <= 60_000 for v in refused)


async def test_framework_errors_are_json_without_internals(client, admin):
    """Unknown paths (404) and wrong methods (405) answer the JSON error shape."""
    resp = await client.get("/no/such/path")
    assert resp.status == 404
    assert (await resp.json()) == {"success": False, "error": "Not Found"}
    resp = await client.delete("/api/events", headers=admin)
    assert resp.status == 405
    assert (await resp.json())["success"] is False
    assert "Allow" in resp.headers


async def test_parser_errors_are_json_without_echo(settings, r):
    """Requests aiohttp's parser refuses before any middleware (a URL over 8190 bytes, an
    unknown method, a control character in a header, a bad Content-Length, a Content-Encoding
    it cannot decode) answer the JSON error shape on the server `wks api` runs, quoting
    nothing of the request."""
    from wks.http.app import create_app
    from wks.http.server import serve

    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(create_app(settings, r), "127.0.0.1", 0, stop, on_ready=ready.set_result))
    try:
        port = int((await asyncio.wait_for(ready, 10)).rsplit(":", 1)[1])
        marker = b"zq" * 4100
        cases = {
            b"GET /health?" + marker + b" HTTP/1.1\r\nHost: t\r\n\r\n":
                (400, "request line or header too long"),
            b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + marker + b"\r\n\r\n":
                (400, "request line or header too long"),
            b"FOO /zqzq HTTP/1.1\r\nHost: t\r\n\r\n": (400, "unsupported HTTP method"),
            b"GET /health HTTP/1.1\r\nHost: t\r\nX-Zq: a\x01zq\r\n\r\n":
                (400, "malformed HTTP request"),
            b"POST /api/events HTTP/1.1\r\nHost: t\r\nContent-Length: zq\r\n\r\n":
                (400, "malformed HTTP request"),
            b"POST /api/events HTTP/1.1\r\nHost: t\r\nContent-Encoding: br\r\n"
            b"Content-Length: 4\r\n\r\nzqzq":
                (415, "unsupported Content-Encoding (use gzip or deflate)"),
        }
        for request, (status, error) in cases.items():
            got, headers, body = await raw_http("127.0.0.1", port, request)
            assert (got, json.loads(body)) == (status, {"success": False, "error": error}), request
            assert headers["content-type"].startswith("application/json")
            assert b"zq" not in body
        plain = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        got, _, body = await raw_http("127.0.0.1", port, plain)
        assert got in (200, 503)  # the rest is untouched
        assert "checks" in json.loads(body)
    finally:
        stop.set()
        await task


async def test_unexpected_exception_is_a_500_without_trace(aiohttp_client, settings, r, token):
    """A handler bug answers 500 JSON naming a request id; require_admin refuses users (403)."""
    from wks.http.app import create_app

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(f"secret detail {settings.db_path}")

    async def admin_only(request: web.Request) -> web.Response:
        return web.json_response({"success": True, "sub": require_admin(request).sub})

    app = create_app(settings, r)
    app.router.add_get("/probe/boom", boom)
    app.router.add_get("/probe/admin", admin_only)
    client = await aiohttp_client(app)
    admin = bearer(await token("root", "admin"))
    resp = await client.get("/probe/boom", headers=admin)
    assert resp.status == 500
    text = await resp.text()
    assert "secret detail" not in text
    assert "Traceback" not in text
    assert str(settings.db_path) not in text
    assert (await resp.json())["error"].startswith("internal error (request id")
    assert (await client.get("/probe/admin", headers=admin)).status == 200
    resp = await client.get("/probe/admin", headers=bearer(await token("u", "user")))
    assert resp.status == 403
    assert (await resp.json()) == {"success": False, "error": "admin role required"}


async def test_http_metrics_use_route_templates(client, admin):
    """wks_http_requests_total is labelled by route template, never by raw path."""
    await client.get("/api/workflow-state/some-raw-id-123", headers=admin)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'route="/api/workflow-state/{executionId}"' in text
    assert "some-raw-id-123" not in text
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert "wks_http_request_duration_seconds" in await resp.text()
