"""`POST /api/events`: ingest a JSON array of workflow events in one publish.

Every element is encoded again as compact JSON, keys this version does not know included
(SPEC 3: they are for the consumers that do), and those bytes are judged as the state
consumer will judge its entry (`wks.events.decode_workflow`: the entry size limit included)
and published as they are. The valid ones go in one call; the invalid ones are reported by
index without dropping the good ones.

Status codes: 202 when at least one event was published (the answer lists the entry ids, for
`?after=` reads, and the per-index errors, if any); 400 when nothing was accepted (not an
array, empty, or every element rejected); 503 when Redis cannot take the events.

A `user` may only write its own executions: a `workflow.started` gets `owner` = its sub when
it names none (another owner is refused), and any event for an execution whose start the
store has folded is refused unless that execution is the user's. Before its start is folded,
an execution's claim decides (`wks.http.claims`): a user writes to it if it holds the claim,
or if the claim is free and the same request starts it (before or after its other events: the
fold takes them in any order), which claims it. Admins write anything; their starts claim too.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from loguru import logger

from wks.config import Settings
from wks.errors import BadEventError, RedisUnavailable
from wks.events import WorkflowEvent, WorkflowStarted, decode_workflow, loads
from wks.http import claims as claims_
from wks.http import openapi as oa
from wks.http import queries
from wks.http.auth import Principal, principal_of
from wks.http.context import PRODUCER, REDIS, SETTINGS, STORE
from wks.http.errors import ApiError
from wks.redis import REDIS_DOWN

routes = web.RouteTableDef()
_encode = msgspec.json.Encoder().encode
_DOWN: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_DOWN)


Judged = tuple[int, WorkflowEvent, bytes]  # index, event, the payload to publish


def _judged(index: int, item: Any) -> Judged:
    """An element of the body as an event and its payload, or BadEventError with the
    reason: the very bytes published are the ones judged."""
    payload = _encode(item)
    return index, decode_workflow(payload), payload


_NOT_FOUND = "execution not found"
_UNSTARTED = ("execution not found (start it in this request, or wait until its "
              "workflow.started is applied)")


async def _owned(
    request: web.Request, principal: Principal, events: list[Judged]
) -> tuple[list[Judged], list[dict[str, Any]], set[str]]:
    """Apply the ownership rule for a `user`: (allowed events, errors, the executions this
    request claimed: to release if its events are not published)."""
    store, redis, keys = request.app[STORE], request.app[REDIS], request.app[SETTINGS].keys
    sub = principal.sub
    ids = list(dict.fromkeys(event.execution_id for _, event, _ in events))
    folded = {eid: await queries.start_of(store, eid) for eid in ids}
    claims = await claims_.held(redis, keys, [eid for eid in ids if not folded[eid][0]])

    def open_to(eid: str, starting: bool) -> str | None:
        """None when the user may write to `eid`, else why not."""
        started, owner = folded[eid]
        if started:
            return None if owner == sub else _NOT_FOUND
        claim = claims[eid]
        if claim is None:
            return None if starting else _UNSTARTED
        return None if claim == sub else _NOT_FOUND

    allowed: list[Judged] = []
    errors: list[dict[str, Any]] = []
    # the starts first: a start anywhere in the request opens its execution to the rest
    for index, event, payload in events:
        if not isinstance(event, WorkflowStarted):
            continue
        if (why := open_to(event.execution_id, starting=True)) is not None:
            errors.append({"index": index, "error": why})
        elif event.owner not in (None, sub):
            errors.append({"index": index, "error": "owner must be your own subject"})
        elif event.owner is None:
            try:  # judged again: the owner makes the entry longer
                allowed.append(_judged(index, {**msgspec.json.decode(payload), "owner": sub}))
            except BadEventError as exc:
                errors.append({"index": index, "error": exc.reason})
        else:
            allowed.append((index, event, payload))
    starting = {event.execution_id for _, event, _ in allowed}
    for index, event, payload in events:
        if isinstance(event, WorkflowStarted):
            continue
        eid = event.execution_id
        if (why := open_to(eid, starting=eid in starting)) is not None:
            errors.append({"index": index, "error": why})
        else:
            allowed.append((index, event, payload))
    # the claims, for the starts that passed on free executions; one lost to a concurrent
    # request of another user's is refused whole
    free = {eid: sub for eid in starting if eid in claims and claims[eid] is None}
    now, taken = await claims_.take(redis, keys, claims_.ttl_ms(request.app[SETTINGS]), free)
    lost = {eid for eid, claim in now.items() if claim != sub}
    errors += [{"index": index, "error": _NOT_FOUND}
               for index, event, _ in allowed if event.execution_id in lost]
    allowed = [judged for judged in allowed if judged[1].execution_id not in lost]
    return sorted(allowed, key=lambda j: j[0]), sorted(errors, key=lambda e: e["index"]), taken


@routes.post("/api/events")
async def ingest(request: web.Request) -> web.Response:
    principal = principal_of(request)
    try:
        body = await request.json(loads=loads)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ApiError(400, "body is not JSON: it is not UTF-8") from None
    except RecursionError:
        raise ApiError(400, "body is JSON nested too deeply for the parser") from None
    if not isinstance(body, list) or not body:
        raise ApiError(400, "body must be a non-empty JSON array of workflow events")
    good: list[Judged] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(body):
        try:
            good.append(_judged(index, item))
        except BadEventError as exc:
            errors.append({"index": index, "error": exc.reason})
    redis, settings = request.app[REDIS], request.app[SETTINGS]
    taken: set[str] = set()
    try:
        if not principal.is_admin and good:
            good, refused, taken = await _owned(request, principal, good)
            errors = sorted(errors + refused, key=lambda e: e["index"])
        elif good:  # an admin's starts claim too: no user takes them over before the fold
            _, taken = await claims_.take(
                redis, settings.keys, claims_.ttl_ms(settings),
                claims_.start_owners((event for _, event, _ in good), ""))
        if not good:
            raise ApiError(400, "no valid events", extra={"accepted": 0, "errors": errors})
        ids = await request.app[PRODUCER].publish_payloads(
            [payload for _, _, payload in good])
    except Exception as exc:
        if taken:  # nothing was published: the request's claims go too
            await _release(redis, settings, taken)
        if isinstance(exc, _DOWN):
            raise ApiError(503, "cannot publish: Redis unreachable; retry later") from exc
        raise
    entries = [{"index": index, "entryId": entry_id}
               for (index, _, _), entry_id in zip(good, ids or [], strict=False)]
    return web.json_response(
        {"success": True, "accepted": len(good), "entries": entries, "errors": errors},
        status=202,
    )


async def _release(redis: aioredis.Redis, settings: Settings, taken: set[str]) -> None:
    """The request's claims go with its events: a start that was not published holds
    nothing. Best effort: Redis is likely what failed (the claims then expire)."""
    try:
        await claims_.release(redis, settings.keys, taken)
    except Exception:
        logger.warning("could not release {} execution claim(s) of an unpublished request; "
                       "they expire with streamRetention", len(taken))


_ERRORS = {"type": "array", "items": {
    "type": "object", "required": ["index", "error"], "additionalProperties": False,
    "properties": {"index": {"type": "integer", "minimum": 0}, "error": {"type": "string"}}}}

OPENAPI: dict[str, Any] = {
    "/api/events": {"post": {
        "summary": "Ingest workflow events (validated, published in one call)",
        "operationId": "ingestEvents",
        "requestBody": {"required": True, "content": oa.json_content(
            {"type": "array", "minItems": 1, "items": oa.ref("WorkflowEvent")})},
        "responses": {
            "202": oa.ok("At least one event published; per-index errors for the rest", {
                "type": "object", "additionalProperties": False,
                "required": ["success", "accepted", "entries", "errors"],
                "properties": {
                    "success": {"const": True},
                    "accepted": {"type": "integer", "minimum": 1},
                    "entries": {"type": "array", "items": {
                        "type": "object", "required": ["index", "entryId"],
                        "additionalProperties": False,
                        "properties": {"index": {"type": "integer", "minimum": 0},
                                       "entryId": {"type": "string",
                                                   "pattern": oa.ENTRY_ID_PATTERN}}}},
                    "errors": _ERRORS,
                },
            }),
            **oa.errors(400),
            "400": oa.ok("Nothing accepted", {
                "type": "object", "required": ["success", "error"],
                "properties": {"success": {"const": False}, "error": {"type": "string"},
                               "accepted": {"const": 0}, "errors": _ERRORS}}),
        },
    }},
}
