"""`GET /api/audit/executions/{executionId}/events`: an execution's events in stream order."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from wks.events import loads
from wks.http import openapi as oa
from wks.http import queries
from wks.http.auth import principal_of
from wks.http.context import STORE
from wks.http.errors import not_found

routes = web.RouteTableDef()


def _event(row: dict[str, Any]) -> dict[str, Any]:
    try:
        event = loads(row["payload"])  # as the consumer read it (a lone surrogate: U+FFFD)
    except (msgspec.DecodeError, RecursionError):
        event = None  # only decodable events are folded, but a log row must never 500
    return {"entryId": row["entryId"], "eventId": row["eventId"], "type": row["type"],
            "ts": row["ts"], "appliedAt": row["appliedAt"], "event": event}


@routes.get("/api/audit/executions/{executionId}/events")
async def execution_events(request: web.Request) -> web.Response:
    store = request.app[STORE]
    execution_id = request.match_info["executionId"]
    if not await queries.can_see(store, principal_of(request), execution_id):
        raise not_found()
    events = [_event(row) for row in await store.events_for(execution_id)]
    return web.json_response(
        {"success": True, "executionId": execution_id, "events": events, "count": len(events)}
    )


OPENAPI: dict[str, Any] = {
    "/api/audit/executions/{executionId}/events": {"get": {
        "summary": "The execution's folded events, in stream order (from event_log)",
        "operationId": "auditExecutionEvents",
        "parameters": [oa.execution_id_param()],
        "responses": {"200": oa.ok("The events", {
            "type": "object", "additionalProperties": False,
            "required": ["success", "executionId", "events", "count"],
            "properties": {
                "success": {"const": True},
                "executionId": {"type": "string"},
                "count": {"type": "integer", "minimum": 0},
                "events": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["entryId", "eventId", "type", "ts", "appliedAt", "event"],
                    "properties": {
                        "entryId": {"type": "string", "pattern": oa.ENTRY_ID_PATTERN},
                        "eventId": {"type": ["string", "null"]},
                        "type": {"type": "string"},
                        "ts": {"type": "integer"},
                        "appliedAt": {"type": "integer"},
                        "event": {"type": ["object", "null"]},
                    }}},
            },
        }), **oa.errors(404)},
    }},
}
