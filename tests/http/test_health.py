"""/health: the four checks, degraded while Redis is down, reads still served from SQLite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.consumers import state_reader
from tests.helpers import wait_for
from tests.http.conftest import bearer
from wks.cli.runtime import Runtime
from wks.http.auth import mint_token
from wks.redis import client as redis_client
from wks.store import Store


async def test_healthy_shape(client):
    """With Redis and SQLite up, /health is healthy with database, redis, diskSpace, consumers."""
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy"
    checks = body["checks"]
    assert set(checks) == {"database", "redis", "diskSpace", "consumers", "streams"}
    assert checks["redis"]["mode"] == "external"  # the test settings name the URL
    assert checks["diskSpace"]["freeBytes"] > checks["diskSpace"]["thresholdBytes"]
    assert set(checks["consumers"]["groups"]) == {"state", "backup"}


async def test_mode_and_consumers_come_from_the_runtime(make_client, settings, r, producer, fold):
    """Given a runtime, redis.mode is its mode and in-process readers are reported."""
    await producer.started("h1", "etl", 1)
    await fold()

    class Reader:
        class status:  # mirrors GroupReader.status
            ok = False

    rt = Runtime(settings, r, "redis://x", "managed", readers={"state": Reader()})
    body = await (await (await make_client(settings, runtime=rt)).get("/health")).json()
    assert body["checks"]["redis"]["mode"] == "managed"
    state = body["checks"]["consumers"]["groups"]["state"]
    assert state["exists"] is True
    assert state["pending"] == 0
    assert state["lag"] == 0
    assert state["inProcess"] is True
    assert state["ok"] is False
    assert body["status"] == "degraded"


@contextlib.asynccontextmanager
async def api_on_own_redis(make_client, settings, redis_factory) -> AsyncIterator[tuple]:
    """An API client on a Redis server of its own (to kill or pause), with an admin header."""
    server = redis_factory()
    conn = redis_client(server.url)
    try:
        api = await make_client(settings, conn)
        headers = bearer(await mint_token(settings, conn, "root", "admin", 600))
        yield api, headers, server
    finally:
        await conn.aclose()


async def test_redis_down_is_degraded_and_reads_still_answer(
    make_client, settings, redis_factory, producer, fold
):
    """With Redis stopped, /health is degraded (200) and state reads answer from SQLite."""
    await producer.started("kept", "etl", 2, owner="root")
    await fold()
    async with api_on_own_redis(make_client, settings, redis_factory) as (api, headers, server):
        assert (await api.get("/api/workflow-state/kept", headers=headers)).status == 200
        server.kill()
        resp = await api.get("/health")
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "degraded"
        assert body["checks"]["redis"]["status"] == "unhealthy"
        assert body["checks"]["database"]["status"] == "healthy"
        resp = await api.get("/api/workflow-state/kept", headers=headers)
        assert resp.status == 200
        assert (await resp.json())["state"]["executionId"] == "kept"
        assert "Warning" in resp.headers
        listing = await api.get("/api/workflow-state/active/list", headers=headers)
        assert (await listing.json())["activeExecutions"] == ["kept"]
        resp = await api.post("/api/workflow-state/cleanup", headers=headers)
        assert resp.status == 503  # a write needs Redis: refused, not silently dropped
        bad = {"Authorization": "Bearer garbage"}
        assert (await api.get("/api/workflow-state/kept", headers=bad)).status == 401


async def test_database_failure_is_unhealthy_503(client):
    """When the store stops answering, /health is unhealthy with HTTP 503 and names no path."""
    from wks.http.app import SETTINGS, STORE

    await client.app[STORE].close()
    resp = await client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["status"] == "unhealthy"
    assert str(client.app[SETTINGS].db_path) not in await resp.text()


async def test_paused_redis_does_not_hang_reads(make_client, settings, redis_factory, producer,
                                                fold):
    """With Redis stalled (SIGSTOP), reads answer from SQLite after a bounded session check."""
    await producer.started("slow", "etl", 2, owner="root")
    await fold()
    async with api_on_own_redis(make_client, settings, redis_factory) as (api, headers, server):
        server.pause()
        try:
            resp = await asyncio.wait_for(
                api.get("/api/workflow-state/slow", headers=headers), 10)
            assert resp.status == 200
            assert "Warning" in resp.headers
            health = await asyncio.wait_for(api.get("/health"), 10)
            assert (await health.json())["status"] == "degraded"
        finally:
            server.resume()


async def test_health_shows_streams_and_a_stalled_group(client, settings, r):
    """Stream lengths are reported, and a group with work waiting and no consumer degrades."""
    keys = settings.keys
    await r.xgroup_create(keys.workflow_stream, "state", id="0", mkstream=True)
    await r.xadd(keys.workflow_stream, {"event": b'{"type":"workflow.completed",'
                                                  b'"executionId":"s1","ts":1}'})
    resp = await client.get("/health")
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "degraded"
    state = body["checks"]["consumers"]["groups"]["state"]
    assert state["stalled"] is True
    assert state["lag"] == 1
    assert body["checks"]["streams"]["streams"]["workflow"]["length"] == 1


async def test_a_group_whose_only_consumer_was_killed_is_stalled(client, settings, r):
    """A killed worker's consumer stays registered in its group, holding its entries: the
    group is stalled until a consumer runs (its heartbeat), and again once it has stopped."""
    keys = settings.keys
    await r.xgroup_create(keys.workflow_stream, "state", id="0", mkstream=True)
    for i in range(2):
        await r.xadd(keys.workflow_stream, {"event": b'{"type":"workflow.completed",'
                                                      b'"executionId":"s%d","ts":1}' % i})
    await r.xreadgroup("state", "killed", {keys.workflow_stream: ">"}, count=1)

    async def state_group():
        body = await (await client.get("/health")).json()
        return body, body["checks"]["consumers"]["groups"]["state"]

    body, state = await state_group()
    assert (state["consumers"], state["activeConsumers"], state["pending"]) == (1, 0, 1)
    assert state["stalled"] is True
    assert body["status"] == "degraded"

    stop = asyncio.Event()
    async with await Store.open(settings.db_path) as store:
        task = asyncio.create_task(state_reader(settings, r, store, burst=False).run(stop))
        try:
            async def running():
                body, state = await state_group()
                return (body, state) if state["activeConsumers"] == 1 else None

            body, state = await wait_for(running, 10, "the reader to be counted")
            assert "stalled" not in state
            assert body["status"] == "healthy"
        finally:
            stop.set()
            await task
    _body, state = await state_group()
    assert state["activeConsumers"] == 0


async def test_metrics_report_executions_by_status_and_stale(client, producer, fold):
    """/metrics sets wks_executions and wks_executions_stale from SQLite at scrape time."""
    await producer.started("m1", "etl", 2, ts=1)  # last update in 1970: stale
    await producer.started("m2", "etl", 2)
    await producer.completed("m2")
    await fold()
    text = await (await client.get("/metrics")).text()
    assert 'wks_executions{status="running"} 1.0' in text
    assert 'wks_executions{status="completed"} 1.0' in text
    assert "wks_executions_stale 1.0" in text
    assert "wks_redis_up 1.0" in text
