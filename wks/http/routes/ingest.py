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
it names none (another owner is refused), and any event for an execution that exists is
refused unless that execution is the user's. Progress for an execution the store does not
know yet is accepted only when the same request starts it (before or after the progress: the
fold takes events in any order), or an earlier request of the user's did. Admins write
anything.

Claims. The owner comes from the start with the least stamp (SPEC 4), so the store's owner
alone would leave a window: between a start's publication and its fold (milliseconds, or as
long as the consumers are behind or down), another user could publish an earlier start and
take the execution over. The first start published through the API therefore claims its
execution for its owner ('' for none) with `SET NX` on `wks:claim:{executionId}`, kept for
`streamRetention` (the longest a start can wait in the stream); until the store knows the
execution, its claim decides who may write to it. A start XADDed straight to the stream
claims nothing: it is known once folded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from wks.config import Settings
from wks.errors import BadEventError, RedisUnavailable
from wks.events import WorkflowEvent, WorkflowStarted, decode_workflow, loads
from wks.http import openapi as oa
from wks.http import queries
from wks.http.auth import Principal, principal_of
from wks.http.context import PRODUCER, REDIS, SETTINGS, STORE
from wks.http.errors import ApiError
from wks.keys import Keys
from wks.redis import REDIS_DOWN, text

routes = web.RouteTableDef()
_encode = msgspec.json.Encoder().encode
_DOWN: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_DOWN)


Judged = tuple[int, WorkflowEvent, bytes]  # index, event, the payload to publish


def _claim_ttl_ms(settings: Settings) -> int:
    return int(settings.stream_retention * 1000)


def _judged(index: int, item: Any) -> Judged:
    """An element of the body as an event and its payload, or BadEventError with the
    reason: the very bytes published are the ones judged."""
    payload = _encode(item)
    return index, decode_workflow(payload), payload


async def _claim(
    redis: aioredis.Redis, keys: Keys, ttl_ms: int, owners: dict[str, str],
    mine: Iterable[str] = (),
) -> dict[str, str | None]:
    """Claim each execution of `owners` for its owner unless it is claimed already; read the
    claims of `mine` too. The claims as they now stand, by execution (None: unclaimed).
    One round trip; no script needed (a claim never changes once set)."""
    ids = [*owners, *(eid for eid in mine if eid not in owners)]
    if not ids:
        return {}
    pipe = redis.pipeline(transaction=False)
    for eid, owner in owners.items():
        pipe.set(keys.claim(eid), owner, nx=True, px=ttl_ms)
    pipe.mget([keys.claim(eid) for eid in ids])
    held = (await pipe.execute())[-1]
    return {eid: None if value is None else text(value) for eid, value in zip(ids, held,
                                                                            strict=True)}


def _start_owners(events: list[Judged], default: str) -> dict[str, str]:
    """The owner (`default` for none) each execution started in `events` is claimed for:
    that of its start with the least `ts`, the first of equals (the fold's choice as far as
    it can be known before publishing: an absent eventId's stand-in is the entry id)."""
    starts: dict[str, WorkflowStarted] = {}
    for _, event, _ in events:
        if isinstance(event, WorkflowStarted):
            first = starts.get(event.execution_id)
            if first is None or event.ts < first.ts:
                starts[event.execution_id] = event
    return {eid: start.owner or default for eid, start in starts.items()}


async def _owned(
    request: web.Request, principal: Principal, events: list[Judged]
) -> tuple[list[Judged], list[dict[str, Any]]]:
    """Apply the ownership rule for a `user`: (allowed events, errors)."""
    store, settings = request.app[STORE], request.app[SETTINGS]
    allowed: list[Judged] = []
    errors: list[dict[str, Any]] = []
    known = {eid: await queries.owner_of(store, eid)
             for eid in dict.fromkeys(event.execution_id for _, event, _ in events)}
    unknown = [eid for eid, (exists, _) in known.items() if not exists]
    # a start anywhere in the request counts (the fold takes events in any order), if it
    # is one this user may send (its own owner, or none) for an execution not someone else's
    sendable = [judged for judged in events if isinstance(judged[1], WorkflowStarted)
                and judged[1].owner in (None, principal.sub)]
    starts = {eid: owner for eid, owner in _start_owners(sendable, principal.sub).items()
              if eid in unknown}
    claims = await _claim(request.app[REDIS], settings.keys, _claim_ttl_ms(settings),
                          starts, unknown)
    for index, event, payload in events:
        eid = event.execution_id
        exists, owner = known[eid]
        claimed = claims.get(eid)
        if (exists and owner != principal.sub) or (
                not exists and claimed is not None and claimed != principal.sub):
            errors.append({"index": index, "error": "execution not found"})
            continue
        if isinstance(event, WorkflowStarted):
            if event.owner is None:
                try:  # judged again: the owner makes the entry longer
                    _, event, payload = _judged(
                        index, {**msgspec.json.decode(payload), "owner": principal.sub})
                except BadEventError as exc:
                    errors.append({"index": index, "error": exc.reason})
                    continue
            elif event.owner != principal.sub:
                errors.append({"index": index, "error": "owner must be your own subject"})
                continue
        elif not exists and claimed is None:
            errors.append({"index": index,
                           "error": "execution not found (start it in this request, or wait "
                                    "until its workflow.started is applied)"})
            continue
        allowed.append((index, event, payload))
    return allowed, errors


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
    try:
        if not principal.is_admin and good:
            good, refused = await _owned(request, principal, good)
            errors = sorted(errors + refused, key=lambda e: e["index"])
        if not good:
            raise ApiError(400, "no valid events", extra={"accepted": 0, "errors": errors})
        if principal.is_admin:  # an admin's starts claim too: no user takes them over
            settings = request.app[SETTINGS]
            await _claim(request.app[REDIS], settings.keys, _claim_ttl_ms(settings),
                         _start_owners(good, ""))
        ids = await request.app[PRODUCER].publish_payloads(
            [payload for _, _, payload in good])
    except _DOWN as exc:
        raise ApiError(503, "cannot publish: Redis unreachable; retry later") from exc
    entries = [{"index": index, "entryId": entry_id}
               for (index, _, _), entry_id in zip(good, ids or [], strict=False)]
    return web.json_response(
        {"success": True, "accepted": len(good), "entries": entries, "errors": errors},
        status=202,
    )


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
