"""Ownership claims: who may write to an execution the store does not know a start of yet.

The owner comes from the start with the least stamp (SPEC 4), so the store's owner alone
leaves a window: between a start's publication and its fold (milliseconds, or as long as the
consumers are behind or down), another user could publish an earlier start and take the
execution over. The first start published through the API therefore claims its execution
for its owner ('' for none) with `SET NX` on `wks:claim:{executionId}`, kept for
`streamRetention` (how long a start normally stays in the stream). A claim never changes
once set; it only expires. A start XADDed straight to the stream claims nothing: it protects
its execution once folded.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from wks.config import Settings
from wks.events import WorkflowEvent, WorkflowStarted
from wks.keys import Keys
from wks.redis import text


def ttl_ms(settings: Settings) -> int:
    return int(settings.stream_retention * 1000)


async def held(redis: aioredis.Redis, keys: Keys, ids: Iterable[str]) -> dict[str, str | None]:
    """Each execution's claim (None: unclaimed), in one round trip."""
    ids = list(ids)
    if not ids:
        return {}
    values = await redis.mget([keys.claim(eid) for eid in ids])
    return {eid: None if v is None else text(v) for eid, v in zip(ids, values, strict=True)}


async def take(
    redis: aioredis.Redis, keys: Keys, ttl: int, owners: dict[str, str]
) -> tuple[dict[str, str | None], set[str]]:
    """Claim each execution of `owners` for its owner unless it is claimed already: (the
    claims as they now stand, the executions this call claimed). One round trip."""
    if not owners:
        return {}, set()
    pipe = redis.pipeline(transaction=False)
    for eid, owner in owners.items():
        pipe.set(keys.claim(eid), owner, nx=True, px=ttl)
    pipe.mget([keys.claim(eid) for eid in owners])
    *won, values = await pipe.execute()
    now = {eid: None if v is None else text(v) for eid, v in zip(owners, values, strict=True)}
    return now, {eid for eid, ok in zip(owners, won, strict=True) if ok}


async def release(redis: aioredis.Redis, keys: Keys, ids: Iterable[str]) -> None:
    """Drop claims this request took (its events were not published). They were set with
    NX by this request and never change: nobody else's claim is deleted."""
    ids = list(ids)
    if ids:
        await redis.delete(*(keys.claim(eid) for eid in ids))


def start_owners(events: Iterable[WorkflowEvent], default: str) -> dict[str, str]:
    """The owner (`default` for none) of each execution's start among `events`: the one
    with the least (ts, eventId), as the fold chooses (an absent eventId counts as the
    least here: its stand-in, the entry id, is not known before publishing)."""
    starts: dict[str, WorkflowStarted] = {}
    for event in events:
        if isinstance(event, WorkflowStarted):
            first = starts.get(event.execution_id)
            if first is None or (event.ts, event.event_id or "") < (first.ts,
                                                                     first.event_id or ""):
                starts[event.execution_id] = event
    return {eid: start.owner or default for eid, start in starts.items()}
