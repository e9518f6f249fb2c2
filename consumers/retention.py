"""Retention: trim the streams by age and prune `event_log`, one worker at a time.

Streams (SPEC section 5): every pass removes entries older than `streamRetention` with
`XTRIM MINID` (exact, not `~`), but never past the oldest entry that some consumer group of
that stream still needs: for each group, its oldest pending entry (delivered, not yet
acknowledged: a consumer may have died holding it) and the first entry after its
last-delivered id (not yet delivered at all). A stopped group therefore holds retention back
for its stream until it catches up or is deleted (`XGROUP DESTROY`); /health shows the
oldest entry's age so that shows up. The workflow and backup streams are not trimmed at all
while their own group (`state`, `backup`) does not exist: a worker that runs only the other
group, or only the trimmer, must not trim entries the missing group has yet to read.

One race is accepted: another group created *during* a pass with a start id older than the
cutoff may find those entries gone.

`event_log` is pruned per execution, whole: once an execution's newest logged event was
applied more than `eventLogRetention` ago, all its rows (and aliases) go together. An
execution's log is therefore either complete or absent, which is what `wks replay --verify`
relies on to tell a partial history from a missing one. A pruned entry no longer answers
`?after=ENTRY_ID` reads (they wait, then time out) and `wks audit` no longer lists it.

The pass runs under lock `trim` (non-blocking: a worker that finds it held skips the pass).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from wks import metrics
from wks.aio import wait_stop
from wks.config import Settings
from wks.errors import WksError
from wks.events import now_ms, split_entry_id
from wks.keys import GROUP_BACKUP, GROUP_STATE, Keys
from wks.locks import Lock
from wks.redis import REDIS_DOWN, text
from wks.store import Store
from wks.stream_stats import LAST_RUN_FIELD, stream_groups, stream_stats

LOCK_NAME = "trim"
# the consumer group each stream is written for; the others (results, dead) are read by
# people and tools, and trimmed by age alone
READERS = {"workflow": GROUP_STATE, "backup": GROUP_BACKUP}
_PRUNE_CHUNK = 1000

# a failed pass is retried by the next one: retention is never urgent
_PASS_ERRORS: tuple[type[BaseException], ...] = (*REDIS_DOWN, ResponseError, WksError)

Service = Callable[[asyncio.Event], Awaitable[None]]


class Runtime(Protocol):
    """What the service needs of `wks.cli.runtime.Runtime`."""

    settings: Settings
    redis: aioredis.Redis


def pass_interval(settings: Settings) -> float:
    """How often to trim: every minute, sooner for very short retentions (tests)."""
    return max(1.0, min(60.0, settings.stream_retention / 10))


async def trim_floor(
    redis: aioredis.Redis, stream: str, groups: list[dict[str, Any]] | None = None
) -> str | None:
    """The oldest entry id any group of `stream` (`groups`: its XINFO GROUPS, when read
    already) still needs; None when none needs any."""
    needed: list[str] = []
    for g in await stream_groups(redis, stream) if groups is None else groups:
        name = text(g["name"])
        if int(g["pending"]):
            oldest = await redis.xpending_range(stream, name, min="-", max="+", count=1)
            if oldest:
                needed.append(text(oldest[0]["message_id"]))
        after = await redis.xrange(stream, min=f"({text(g['last-delivered-id'])}", count=1)
        if after:
            needed.append(text(after[0][0]))
    return min(needed, key=split_entry_id) if needed else None


async def trim_stream(
    redis: aioredis.Redis, stream: str, retention: float, now: int | None = None,
    *, reader: str | None = None,
) -> int:
    """Trim entries older than `retention` seconds, keeping what any group still needs.
    With `reader` (the group the stream is for), nothing while that group does not exist:
    it has not been created yet, or was removed, and may still have every entry to read
    (a trimmer runs in every worker, also in one that does not run that group)."""
    cutoff = (now_ms() if now is None else now) - int(retention * 1000)
    if cutoff <= 0:
        return 0
    groups = await stream_groups(redis, stream)
    if reader is not None and reader not in {text(g["name"]) for g in groups}:
        return 0
    minid = (cutoff, 0)
    floor = await trim_floor(redis, stream, groups)
    if floor is not None and split_entry_id(floor) < minid:
        minid = split_entry_id(floor)
    return int(await redis.xtrim(stream, minid=f"{minid[0]}-{minid[1]}", approximate=False))


async def trim_all(
    redis: aioredis.Redis, keys: Keys, retention: float, now: int | None = None
) -> dict[str, int]:
    """Trim every stream; record the totals (metrics and Redis, for /health)."""
    now = now_ms() if now is None else now
    trimmed: dict[str, int] = {}
    for name, stream in keys.streams.items():
        n = await trim_stream(redis, stream, retention, now, reader=READERS.get(name))
        trimmed[name] = n
        if n:
            metrics.STREAM_TRIMMED.labels(name).inc(n)
            logger.bind(stream=stream).info("trimmed {} entries older than retention", n)
    async with redis.pipeline(transaction=True) as pipe:
        for name, n in trimmed.items():
            if n:
                pipe.hincrby(keys.retention_totals, name, n)
        pipe.hset(keys.retention_totals, LAST_RUN_FIELD, now)
        await pipe.execute()
    await stream_stats(redis, keys, now)  # refresh the length and age gauges
    return trimmed


async def prune_event_log(store: Store, retention: float, now: int | None = None) -> int:
    """Delete the logged events of executions idle longer than `retention`; rows removed."""
    cutoff = (now_ms() if now is None else now) - int(retention * 1000)
    cursor: tuple[int, int] = (-1, -1)  # (applied_at, seq) of the last old row examined
    removed = 0
    while True:
        rows = await store.fetchall(
            "SELECT applied_at, seq, execution_id FROM event_log"
            " WHERE applied_at < ? AND (applied_at, seq) > (?, ?)"
            " ORDER BY applied_at, seq LIMIT ?", (cutoff, *cursor, _PRUNE_CHUNK))
        if not rows:
            return removed
        cursor = (rows[-1][0], rows[-1][1])
        candidates = sorted({r[2] for r in rows})
        removed += await _prune(store, candidates, cutoff)


async def _prune(store: Store, candidates: list[str], cutoff: int) -> int:
    marks = ",".join("?" * len(candidates))
    async with store.transaction("prune event_log") as conn:  # short: one chunk each
        # executions with a recent event keep their whole log
        async with conn.execute(
            f"SELECT DISTINCT execution_id FROM event_log WHERE execution_id IN ({marks})"
            " AND applied_at >= ?", (*candidates, cutoff)) as cur:
            recent = {r[0] for r in await cur.fetchall()}
        idle = [c for c in candidates if c not in recent]
        if not idle:
            return 0
        idle_marks = ",".join("?" * len(idle))
        deleted = await conn.execute(
            f"DELETE FROM event_log WHERE execution_id IN ({idle_marks})", idle)
        await conn.execute(f"DELETE FROM event_alias WHERE execution_id IN ({idle_marks})", idle)
        return int(deleted.rowcount)


async def run_once(
    redis: aioredis.Redis, settings: Settings, store: Store, now: int | None = None
) -> dict[str, Any] | None:
    """One retention pass under lock `trim`; None when another worker holds it."""
    keys = settings.keys
    lock = Lock(redis, keys, LOCK_NAME, settings.lock_ttl)
    if not await lock.acquire(blocking=False):
        return None
    try:
        trimmed = await trim_all(redis, keys, settings.stream_retention, now)
        pruned = await prune_event_log(store, settings.event_log_retention, now)
    finally:
        await lock.release()
    if pruned:
        logger.info("pruned {} event_log rows older than eventLogRetention", pruned)
    return {"trimmed": trimmed, "pruned": pruned}


def retention_service(rt: Runtime, *, burst: bool = False) -> Service:
    """The trimmer: a retention pass every `pass_interval`; with `burst`, one pass."""
    settings = rt.settings

    async def run(stop: asyncio.Event) -> None:
        store = await Store.open(settings.db_path)
        try:
            while True:
                try:
                    await run_once(rt.redis, settings, store)
                except _PASS_ERRORS as exc:
                    logger.warning("retention pass failed: {}", exc)
                if burst or await wait_stop(stop, pass_interval(settings)):
                    return
        finally:
            await store.close()

    return run
