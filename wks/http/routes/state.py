"""Workflow state: by id (with read-your-writes), active lists, statistics, cleanup, SSE."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from loguru import logger
from redis.exceptions import ResponseError

from wks.aio import wait_stop
from wks.errors import BadEventError, RedisUnavailable
from wks.events import CleanupCompleted, WorkflowFailed, now_ms, split_entry_id
from wks.http import openapi as oa
from wks.http import queries
from wks.http.auth import principal_of, visible
from wks.http.context import PRODUCER, REDIS, SETTINGS, SHUTDOWN, STORE
from wks.http.errors import ApiError, not_found
from wks.redis import REDIS_DOWN, REDIS_UNWELL, text
from wks.state import TERMINAL

routes = web.RouteTableDef()

MAX_WAIT = 60.0  # seconds a ?after= read may wait
DEFAULT_WAIT = 5.0
DEAD_SCAN = 100  # dead letters searched for a waited-for entry that timed out (admins)
DEAD_SCAN_TIMEOUT = 1.0  # seconds: a stalled Redis does not hold the 504 back
SSE_POLL = 0.25  # seconds between store polls of an SSE stream
SSE_KEEPALIVE = 15.0  # a comment line this often keeps proxies from closing an idle stream
SSE_APPEAR_WAIT = 2.0  # seconds an SSE request for an unknown execution waits for it
_ENTRY_ID = re.compile(oa.ENTRY_ID_PATTERN)
_BASE = "/api/workflow-state"
_DOWN: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_DOWN)
_json = msgspec.json.Encoder()


def _dumps(body: Any) -> str:
    """msgspec for the hot read (the same JSON as json.dumps, at a fraction of the cost)."""
    return _json.encode(body).decode()


def _wait_params(query: Any) -> tuple[str | None, float]:
    after = query.get("after")
    if after is None:
        if "wait" in query:
            raise ApiError(400, "wait needs after=ENTRY_ID")
        return None, 0.0
    if not _ENTRY_ID.match(after):
        raise ApiError(400, "after must be a stream entry id like 1700000000000-0")
    text = query.get("wait")
    if text is None:
        return after, DEFAULT_WAIT
    try:
        wait = float(text)
    except ValueError:
        raise ApiError(400, "wait must be a number of seconds") from None
    if not 0 <= wait <= MAX_WAIT:  # also refuses nan and inf
        raise ApiError(400, f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return after, wait


async def _poll(request: web.Request, done: Callable[[], Awaitable[bool]], wait: float) -> bool:
    """Poll SQLite until `done()` (commits come from other processes); False after `wait`."""
    stop = request.app[SHUTDOWN]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.01
    while not await done():
        left = deadline - loop.time()
        if left <= 0 or stop.is_set():
            return False
        await wait_stop(stop, min(delay, left))
        delay = min(delay * 2, 0.1)
    return True


async def _await_entry(request: web.Request, entry_id: str, wait: float) -> None:
    store = request.app[STORE]
    if not await _poll(request, lambda: store.entry_applied(entry_id), wait):
        why = await _dead_lettered(request, entry_id)
        raise ApiError(504, f"entry {entry_id} not applied within {wait:g}s{why}")


async def _dead_lettered(request: web.Request, entry_id: str) -> str:
    """For an admin: why a waited-for entry will never be applied, when it was dead-lettered
    (searched among the first DEAD_SCAN dead letters from the entry's time on: an entry is
    dead-lettered soon after it is written), else "". Users get the plain 504: they may name
    any entry id, and the search must not be theirs to run at will."""
    if not principal_of(request).is_admin:
        return ""
    keys = request.app[SETTINGS].keys
    try:
        rows = await asyncio.wait_for(request.app[REDIS].xrange(
            keys.dead_stream, min=f"{split_entry_id(entry_id)[0]}-0", max="+", count=DEAD_SCAN),
            DEAD_SCAN_TIMEOUT)
    except REDIS_UNWELL:
        return ""  # the answer is the timeout either way
    wanted = {b"stream": keys.workflow_stream.encode(), b"entryId": entry_id.encode()}
    for _, fields in rows:
        if all(fields.get(k) == v for k, v in wanted.items()):
            return f": it was dead-lettered ({text(fields.get(b'reason', b''), 'replace')})"
    return ""


@routes.get(_BASE + "/active/list")
async def active_list(request: web.Request) -> web.Response:
    ids = await queries.active_ids(request.app[STORE], principal_of(request))
    return web.json_response({"success": True, "activeExecutions": ids, "count": len(ids)})


@routes.get(_BASE + "/active/detailed")
async def active_detailed(request: web.Request) -> web.Response:
    rows = await queries.active_detailed(request.app[STORE], principal_of(request))
    return web.json_response({"success": True, "workflows": rows, "count": len(rows)})


@routes.get(_BASE + "/stats/overview")
async def stats_overview(request: web.Request) -> web.Response:
    stats = await queries.statistics(request.app[STORE], principal_of(request))
    return web.json_response({"success": True, "statistics": stats})


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


async def _cleanup_outcome(request: web.Request, outcome: CleanupCompleted) -> None:
    """The cleanup's outcome on the results stream (SPEC 2), for whoever audits it. The
    failures it published are the cleanup itself: when this record cannot be written after
    them (Redis gone, or refusing writes), the request still succeeded, and the record is
    missing (logged)."""
    try:
        await request.app[PRODUCER].publish(outcome, request.app[SETTINGS].keys.results_stream)
    except (*_DOWN, ResponseError, BadEventError) as exc:
        logger.warning("cleanup outcome not written to the results stream: {}", exc)


@routes.post(_BASE + "/cleanup")
async def cleanup(request: web.Request) -> web.Response:
    """Fail stale executions by publishing `workflow.failed`, so the audit log shows it."""
    principal = principal_of(request)
    settings = request.app[SETTINGS]
    now = now_ms()
    stale = await queries.stale(
        request.app[STORE], principal, now - int(settings.stale_after * 1000)
    )
    reason = f"stale: no update for {_human(settings.stale_after)}"
    # a deterministic eventId: running cleanup twice before the fold catches up folds once
    events = [
        WorkflowFailed(
            execution_id=eid, error=reason, ts=now,
            event_id="stale-" + hashlib.sha256(f"{eid}\0{updated}".encode()).hexdigest()[:40],
        )
        for eid, updated in stale
    ]
    if events:
        try:
            await request.app[PRODUCER].publish_many(events)
        except _DOWN as exc:
            raise ApiError(503, "cannot publish: Redis unreachable; retry later") from exc
        logger.bind(sub=principal.sub).info("cleanup failed {} stale executions", len(events))
        await _cleanup_outcome(request, CleanupCompleted(
            cleaned=len(events), stale_after_ms=int(settings.stale_after * 1000),
            requested_by=principal.sub, ts=now))
    return web.json_response(
        {"success": True, "message": "Cleanup completed", "cleaned": len(events), "errors": 0}
    )


@routes.get(_BASE + "/{executionId}")
async def get_state(request: web.Request) -> web.Response:
    execution_id = request.match_info["executionId"]
    after, wait = _wait_params(request.query)
    store, principal = request.app[STORE], principal_of(request)
    if after is not None:
        # for another's execution too: answering it sooner would tell that it exists
        await _await_entry(request, after, wait)
    state = await queries.state_for(store, principal, execution_id)
    if state is None:
        raise not_found()
    return web.json_response({"success": True, "state": state}, dumps=_dumps)


@routes.get(_BASE + "/{executionId}/events")
async def state_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the state as a `data:` JSON line each time it changes, to terminal."""
    store = request.app[STORE]
    principal = principal_of(request)
    execution_id = request.match_info["executionId"]
    after, wait = _wait_params(request.query)
    exists, owner = await queries.owner_of(store, execution_id)
    if after is not None:
        await _await_entry(request, after, wait)
    elif exists and not visible(principal, owner):
        # as long as for one that does not exist (state_for then says 404 for both): the
        # time must not tell which it is
        await wait_stop(request.app[SHUTDOWN], SSE_APPEAR_WAIT)
    elif not exists:
        # a client that subscribes right after publishing `workflow.started` would otherwise
        # race the fold and get a 404 for an execution a few ms away
        async def appeared() -> bool:
            return (await queries.owner_of(store, execution_id))[0]

        await _poll(request, appeared, SSE_APPEAR_WAIT)
    state = await queries.state_for(store, principal, execution_id)
    if state is None:
        raise not_found()
    if request.method == "HEAD":  # headers only: do not hold a stream open for nobody
        return web.Response(headers={"Content-Type": "text/event-stream"})
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    # the client going away is how an event stream's client stops: not an error
    with contextlib.suppress(ConnectionResetError):
        await _stream(request, response, state, execution_id)
    return response


async def _stream(request: web.Request, response: web.StreamResponse, state: dict[str, Any],
                  execution_id: str) -> None:
    """Send `state`, then each change of it, until it is terminal or the server stops."""
    store, principal, stop = request.app[STORE], principal_of(request), request.app[SHUTDOWN]
    last = ""
    quiet_since = time.monotonic()
    current: dict[str, Any] | None = state
    while current is not None:
        text = json.dumps(current, separators=(",", ":"), sort_keys=True)
        if text != last:
            await response.write(f"data: {text}\n\n".encode())
            last = text
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= SSE_KEEPALIVE:
            await response.write(b": keepalive\n\n")
            quiet_since = time.monotonic()
        if current["status"] in TERMINAL or await wait_stop(stop, SSE_POLL):
            break
        current = await queries.state_for(store, principal, execution_id)
    await response.write_eof()


_STATE_OK = {"type": "object", "required": ["success", "state"], "additionalProperties": False,
             "properties": {"success": {"const": True}, "state": oa.ref("State")}}
_COUNT = {"type": "integer", "minimum": 0}


def _after_params(what: str) -> list[dict[str, Any]]:
    """The execution id and the read-your-writes pair (`?after=ENTRY_ID&wait=S`)."""
    return [
        oa.execution_id_param(),
        {"name": "after", "in": "query", "required": False,
         "schema": {"type": "string", "pattern": oa.ENTRY_ID_PATTERN},
         "description": f"{what} only once this stream entry has been applied"},
        {"name": "wait", "in": "query", "required": False,
         "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
         "description": f"seconds to wait for `after` (default {DEFAULT_WAIT:g}); only with "
                        "`after` (alone it is a 400)"},
    ]


OPENAPI: dict[str, Any] = {
    _BASE + "/{executionId}": {"get": {
        "summary": "An execution's state; with ?after=, once that stream entry is applied",
        "operationId": "getWorkflowState",
        "parameters": _after_params("answer"),
        "responses": {"200": oa.ok("The state", _STATE_OK), **oa.errors(400, 404, 504)},
    }},
    _BASE + "/{executionId}/events": {"get": {
        "summary": "Server-Sent Events: the state each time it changes, until terminal",
        "operationId": "streamWorkflowState",
        "parameters": _after_params("start"),
        "responses": {
            "200": {"description": "`data: <state JSON>` lines",
                    "content": {"text/event-stream": {"schema": {
                        "type": "object", "required": ["data"],
                        "description": "one event per state change; `data` is the state JSON",
                        "properties": {"data": {"type": "string",
                                                "contentMediaType": "application/json",
                                                "contentSchema": oa.ref("State")}}}}}},
            **oa.errors(400, 404, 504),
        },
    }},
    _BASE + "/active/list": {"get": {
        "summary": "Ids of pending and running executions",
        "operationId": "listActive",
        "responses": {"200": oa.ok("Active execution ids", {
            "type": "object", "required": ["success", "activeExecutions", "count"],
            "additionalProperties": False,
            "properties": {"success": {"const": True}, "count": _COUNT,
                           "activeExecutions": {"type": "array", "items": {"type": "string"}}},
        }), **oa.errors()},
    }},
    _BASE + "/active/detailed": {"get": {
        "summary": "Pending and running executions with their progress",
        "operationId": "listActiveDetailed",
        "responses": {"200": oa.ok("Active executions", {
            "type": "object", "required": ["success", "workflows", "count"],
            "additionalProperties": False,
            "properties": {"success": {"const": True}, "count": _COUNT, "workflows": {
                "type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["executionId", "status", "progress", "currentStep"],
                    "properties": {
                        "executionId": {"type": "string"},
                        "status": {"enum": ["pending", "running"]},
                        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                        "currentStep": {"type": ["string", "null"]},
                    }}}},
        }), **oa.errors()},
    }},
    _BASE + "/stats/overview": {"get": {
        "summary": "Counts by status (all visible executions), average progress (active ones)",
        "operationId": "statsOverview",
        "responses": {"200": oa.ok("Statistics", {
            "type": "object", "required": ["success", "statistics"],
            "additionalProperties": False,
            "properties": {"success": {"const": True}, "statistics": {
                "type": "object", "additionalProperties": False,
                "required": ["activeExecutions", "executionsByStatus", "averageProgress"],
                "properties": {
                    "activeExecutions": _COUNT,
                    "averageProgress": {"type": "number", "minimum": 0, "maximum": 100},
                    "executionsByStatus": {
                        "type": "object", "additionalProperties": False,
                        "required": list(queries.STATUSES),
                        "properties": {s: _COUNT for s in queries.STATUSES}},
                }}},
        }), **oa.errors()},
    }},
    _BASE + "/cleanup": {"post": {
        "summary": "Fail executions with no update for staleAfter (publishes workflow.failed)",
        "operationId": "cleanupStale",
        "responses": {"200": oa.ok("Cleanup result", {
            "type": "object", "additionalProperties": False,
            "required": ["success", "message", "cleaned", "errors"],
            "properties": {"success": {"const": True}, "message": {"type": "string"},
                           "cleaned": _COUNT, "errors": _COUNT},
        }), **oa.errors()},
    }},
}
