"""Workflow state routes: shapes, ownership, read-your-writes, SSE and cleanup."""

from __future__ import annotations

import asyncio
import json
import time

from tests.helpers import wait_for
from tests.http.conftest import bearer

BASE = "/api/workflow-state"
STATE_KEYS = {"executionId", "workflowId", "status", "progress", "currentStep", "totalSteps",
              "completedSteps", "data", "startedAt", "updatedAt", "estimatedCompletion", "owner"}


async def _seed(producer, fold) -> None:
    """alice runs a1 (2/4), bob runs b1 (0/2), alice's a2 completed."""
    await producer.started("a1", "etl", 4, owner="alice", data={"k": 1})
    await producer.progress("a1", 2, current_step="transform")
    await producer.started("b1", "etl", 2, owner="bob")
    await producer.started("a2", "etl", 1, owner="alice")
    await producer.completed("a2")
    await fold()


async def test_state_by_id_has_the_spec_shape(client, admin, producer, fold):
    """GET by id answers success and the camelCase state of SPEC section 4."""
    await _seed(producer, fold)
    resp = await client.get(f"{BASE}/a1", headers=admin)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"success", "state"}
    assert body["success"] is True
    state = body["state"]
    assert set(state) == STATE_KEYS
    assert state["status"] == "running"
    assert state["progress"] == 50
    assert state["currentStep"] == "transform"
    assert state["completedSteps"] == 2
    assert state["data"] == {"k": 1}
    assert state["owner"] == "alice"


async def test_unknown_ids_answer_404(client, admin):
    """An unknown execution is a JSON 404 on state, SSE and audit."""
    for path in (f"{BASE}/nope", f"{BASE}/nope/events", "/api/audit/executions/nope/events"):
        resp = await client.get(path, headers=admin)
        assert resp.status == 404, path
        assert (await resp.json()) == {"success": False, "error": "execution not found"}


async def test_lists_and_stats_shapes(client, admin, producer, fold):
    """Active list, active detailed and stats overview have the seed's shapes."""
    await _seed(producer, fold)
    body = await (await client.get(f"{BASE}/active/list", headers=admin)).json()
    assert body == {"success": True, "activeExecutions": ["a1", "b1"], "count": 2}
    body = await (await client.get(f"{BASE}/active/detailed", headers=admin)).json()
    assert body == {"success": True, "count": 2, "workflows": [
        {"executionId": "a1", "status": "running", "progress": 50, "currentStep": "transform"},
        {"executionId": "b1", "status": "running", "progress": 0, "currentStep": None}]}
    body = await (await client.get(f"{BASE}/stats/overview", headers=admin)).json()
    assert body == {"success": True, "statistics": {
        "activeExecutions": 2, "averageProgress": 25.0,
        "executionsByStatus": {"pending": 0, "running": 2, "completed": 1, "failed": 0,
                               "cancelled": 0}}}


async def test_users_see_only_their_own_executions(client, token, producer, fold):
    """A user gets 404 (not 403) for another's execution everywhere, and filtered lists."""
    await _seed(producer, fold)
    bob = bearer(await token("bob", "user"))
    applied = await producer.started("b2", "etl", 1, owner="bob")
    await fold()
    for path in (f"{BASE}/a1", f"{BASE}/a1/events", "/api/audit/executions/a1/events",
                 f"{BASE}/a1?after={applied}&wait=0"):
        resp = await client.get(path, headers=bob)
        assert resp.status == 404, path
    # waiting for an entry never applied: as for an execution that does not exist, so the
    # answer does not tell that another's exists
    for eid in ("a1", "nope"):
        assert (await client.get(f"{BASE}/{eid}?after=0-1&wait=0", headers=bob)).status == 504
    assert (await client.get(f"{BASE}/b1", headers=bob)).status == 200
    body = await (await client.get(f"{BASE}/active/list", headers=bob)).json()
    assert sorted(body["activeExecutions"]) == ["b1", "b2"]
    body = await (await client.get(f"{BASE}/active/detailed", headers=bob)).json()
    assert sorted(w["executionId"] for w in body["workflows"]) == ["b1", "b2"]
    stats = (await (await client.get(f"{BASE}/stats/overview", headers=bob)).json())["statistics"]
    assert stats["activeExecutions"] == 2
    assert stats["executionsByStatus"]["completed"] == 0


async def test_audit_lists_events_in_stream_order(client, admin, producer, fold):
    """The audit route returns the execution's events from event_log in stream order."""
    await _seed(producer, fold)
    body = await (await client.get("/api/audit/executions/a1/events", headers=admin)).json()
    assert body["success"] is True
    assert body["executionId"] == "a1"
    assert body["count"] == 2
    assert [e["type"] for e in body["events"]] == ["workflow.started", "workflow.progress"]
    first = body["events"][0]
    assert set(first) == {"entryId", "eventId", "type", "ts", "appliedAt", "event"}
    assert first["event"]["workflowId"] == "etl"


async def test_audit_shows_an_event_with_a_lone_surrogate_as_folded(
    client, admin, r, settings, fold
):
    """An event whose JSON holds a lone surrogate escape is folded with U+FFFD there; the
    audit route shows it so, not as null."""
    raw = (b'{"type":"workflow.started","executionId":"s1","workflowId":"w","totalSteps":1,'
           b'"ts":1,"data":{"note":"a\\ud800"}}')
    await r.xadd(settings.keys.workflow_stream, {"event": raw})
    await fold()
    body = await (await client.get("/api/audit/executions/s1/events", headers=admin)).json()
    assert body["events"][0]["event"]["data"] == {"note": "a\ufffd"}


async def test_after_answers_only_once_the_entry_is_applied(client, admin, producer, fold):
    """?after=ENTRY_ID waits until a consumer applies that entry, then answers the new state."""
    entry = await producer.started("w1", "etl", 3, owner="root")
    read = asyncio.ensure_future(client.get(f"{BASE}/w1?after={entry}&wait=30", headers=admin))
    # the same read with no patience answers 504: the entry is not applied yet
    probe = await client.get(f"{BASE}/w1?after={entry}&wait=0", headers=admin)
    assert probe.status == 504
    assert not read.done()
    await fold()
    resp = await asyncio.wait_for(read, 10)
    assert resp.status == 200
    assert (await resp.json())["state"]["workflowId"] == "etl"


async def test_after_times_out_with_504_and_validates(client, admin):
    """An entry never applied answers 504 after `wait`; bad after/wait values answer 400."""
    resp = await client.get(f"{BASE}/x?after=1-0&wait=0.2", headers=admin)
    assert resp.status == 504
    assert (await resp.json())["success"] is False
    for query in ("after=abc", "after=1-0&wait=-1", "after=1-0&wait=61", "after=1-0&wait=nan",
                  "after=1-0&wait=x", "wait=1"):
        resp = await client.get(f"{BASE}/x?{query}", headers=admin)
        assert resp.status == 400, query


async def test_after_for_a_dead_lettered_entry_says_so_in_its_504(
        client, admin, token, fold, r, settings):
    """An entry that was dead-lettered is never applied: an admin's 504 says it was
    dead-lettered, and why; a user's is the plain one (it may name anyone's entry)."""
    from wks.keys import EVENT_FIELD

    entry = (await r.xadd(settings.keys.workflow_stream, {EVENT_FIELD: b"not json"})).decode()
    await fold()
    assert len(await r.xrange(settings.keys.dead_stream)) == 1
    for i in range(150):  # later dead letters do not hide it: searched from the entry's time
        await r.xadd(settings.keys.dead_stream, {"stream": settings.keys.workflow_stream,
                                                 "entryId": f"9-{i}", "reason": "other"})
    resp = await client.get(f"{BASE}/x?after={entry}&wait=0", headers=admin)
    assert resp.status == 504
    error = (await resp.json())["error"]
    assert error.startswith(f"entry {entry} not applied within 0s: it was dead-lettered (")
    assert "JSON" in error
    user = bearer(await token("alice", "user"))
    resp = await client.get(f"{BASE}/x?after={entry}&wait=0", headers=user)
    assert (resp.status, (await resp.json())["error"]) == (
        504, f"entry {entry} not applied within 0s")
    # an entry that was not dead-lettered keeps the plain answer
    resp = await client.get(f"{BASE}/x?after=1-0&wait=0", headers=admin)
    assert (await resp.json())["error"] == "entry 1-0 not applied within 0s"


async def test_sse_streams_progress_to_completion(client, admin, producer, fold):
    """The SSE route sends the state each time it changes and ends at a terminal status."""
    await producer.started("s1", "etl", 2, owner="root")
    await fold()
    resp = await client.get(f"{BASE}/s1/events", headers=admin)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    seen: list[dict] = []

    async def read() -> None:
        async for line in resp.content:
            text = line.decode().strip()
            if text.startswith("data: "):
                seen.append(json.loads(text[6:]))

    reader = asyncio.ensure_future(read())
    await wait_for(lambda: len(seen) >= 1, what="first SSE state")
    await producer.progress("s1", 1, current_step="one")
    await fold()
    await wait_for(lambda: any(s["completedSteps"] == 1 for s in seen), what="progress")
    await producer.completed("s1")
    await fold()
    await asyncio.wait_for(reader, 10)  # the stream ends by itself at the terminal state
    assert next(s["status"] for s in seen) == "running"
    assert seen[-1]["status"] == "completed"
    assert seen[-1]["progress"] == 100
    assert [s["progress"] for s in seen] == sorted(s["progress"] for s in seen)


async def test_sse_subscribed_before_the_fold_waits_for_the_execution(
    client, admin, producer, fold
):
    """Subscribing right after publishing `workflow.started` races the fold: the route waits
    a moment for the execution (or, with ?after=, for that entry) instead of a 404."""
    async def first_state(path: str) -> dict:
        resp = await client.get(path, headers=admin)
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b"data: "):
                resp.close()
                return json.loads(line[6:])
        raise AssertionError("the stream ended without a state")

    await producer.started("early", "etl", 2)
    waiting = asyncio.ensure_future(first_state(f"{BASE}/early/events"))
    await asyncio.sleep(0)  # the request is on its way before anything is folded
    await fold()
    assert (await asyncio.wait_for(waiting, 10))["executionId"] == "early"

    entry = await producer.started("later", "etl", 2)
    waiting = asyncio.ensure_future(first_state(f"{BASE}/later/events?after={entry}&wait=10"))
    await asyncio.sleep(0)
    await fold()
    assert (await asyncio.wait_for(waiting, 10))["executionId"] == "later"


async def test_cleanup_fails_stale_executions_through_events(
    make_client, make_settings, token, producer, fold, r
):
    """Cleanup publishes workflow.failed for stale active executions; the audit log shows it."""
    settings = make_settings(stale_after=3600.0)
    client = await make_client(settings)
    old = int(time.time() * 1000) - 2 * 3600 * 1000
    await producer.started("old", "etl", 2, owner="root", ts=old)
    await producer.started("new", "etl", 2, owner="root")
    await fold()
    admin = bearer(await token("root", "admin"))
    resp = await client.post(f"{BASE}/cleanup", headers=admin)
    assert resp.status == 200
    assert (await resp.json()) == {"success": True, "message": "Cleanup completed",
                                   "cleaned": 1, "errors": 0}
    await fold()
    state = (await (await client.get(f"{BASE}/old", headers=admin)).json())["state"]
    assert state["status"] == "failed"
    assert state["error"] == "stale: no update for 1h"
    assert (await (await client.get(f"{BASE}/new", headers=admin)).json())["state"]["status"] \
        == "running"
    audit = await (await client.get("/api/audit/executions/old/events", headers=admin)).json()
    assert audit["events"][-1]["type"] == "workflow.failed"
    again = await (await client.post(f"{BASE}/cleanup", headers=admin)).json()
    assert again["cleaned"] == 0
    # the outcome on the results stream (SPEC 2), once: the second cleanup did nothing
    results = await r.xrange(settings.keys.results_stream)
    assert len(results) == 1
    outcome = json.loads(results[0][1][b"event"])
    assert {k: v for k, v in outcome.items() if k != "ts"} == {
        "type": "cleanup.completed", "cleaned": 1, "staleAfterMs": 3_600_000,
        "requestedBy": "root"}


async def test_sse_head_answers_without_streaming(client, admin, producer, fold):
    """HEAD on the SSE route answers the headers at once even for a running execution."""
    await producer.started("h1", "etl", 2, owner="root")
    await fold()
    resp = await asyncio.wait_for(client.head(f"{BASE}/h1/events", headers=admin), 5)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")


async def test_sse_ends_when_the_server_shuts_down(client, admin, producer, fold):
    """An SSE stream of a running execution ends once the app begins shutting down."""
    await producer.started("long", "etl", 100, owner="root")
    await fold()
    resp = await client.get(f"{BASE}/long/events", headers=admin)
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readline(), 10)
    assert first.startswith(b"data: ")
    await client.app.shutdown()  # fires on_shutdown, as AppRunner.cleanup does
    rest = await asyncio.wait_for(resp.content.read(), 10)
    assert b"data: " not in rest  # nothing new, and the stream is closed


def _requests(route: str, status: str) -> float:
    from wks import metrics

    return metrics.REGISTRY.get_sample_value(
        "wks_http_requests_total", {"method": "GET", "route": route, "status": status}) or 0.0


async def test_sse_client_that_leaves_is_not_a_server_error(
        settings, r, admin, producer, fold, monkeypatch, caplog):
    """A client closing its event stream, on the server `wks api` runs, ends the request as
    a 200 in the metrics with no error logged: leaving is how an SSE client stops, and it
    must not count as a server error (an alert fires on those)."""
    import aiohttp

    from wks.http.app import create_app
    from wks.http.routes import state as state_routes
    from wks.http.server import serve

    monkeypatch.setattr(state_routes, "SSE_KEEPALIVE", 0.0)  # a write every poll
    await producer.started("gone", "etl", 100, owner="root")
    await fold()
    route = f"{BASE}/{{executionId}}/events"
    before = {status: _requests(route, status) for status in ("200", "499", "500")}
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(create_app(settings, r), "127.0.0.1", 0, stop, on_ready=ready.set_result))
    try:
        url = await asyncio.wait_for(ready, 10)
        async with aiohttp.ClientSession() as session:
            resp = await session.get(f"{url}{BASE}/gone/events", headers=admin)
            assert (await asyncio.wait_for(resp.content.readline(), 10)).startswith(b"data: ")
            resp.close()  # the connection goes with it
        await wait_for(lambda: sum(map(_requests, [route] * 3, before)) > sum(before.values()),
                       what="the stream's request counted")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {status: _requests(route, status) - n for status, n in before.items()} == {
        "200": 1, "499": 0, "500": 0}
    assert [rec.getMessage() for rec in caplog.records
            if rec.levelname in ("ERROR", "CRITICAL")] == []


async def test_sse_after_answers_anothers_execution_as_a_missing_one(
        client, admin, token, producer, fold, monkeypatch):
    """With ?after= of an applied entry, the SSE route answers a user's 404 for another's
    execution as for one that does not exist: at once, not after the wait for an execution
    to appear (which would tell that it exists)."""
    from wks.http.routes import state as state_routes

    monkeypatch.setattr(state_routes, "SSE_APPEAR_WAIT", 120.0)  # would outlast the check
    entry = await producer.started("roots", "etl", 2, owner="root")
    await fold()
    alice = bearer(await token("alice", "user"))
    for eid in ("roots", "nobodys"):
        resp = await asyncio.wait_for(
            client.get(f"{BASE}/{eid}/events?after={entry}&wait=5", headers=alice), 20)
        assert resp.status == 404, eid
        assert (await resp.json())["error"] == "execution not found"
