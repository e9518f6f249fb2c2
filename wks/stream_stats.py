"""Stream and consumer-group figures, for /health, metrics, the trimmer and the reader.

    stats = await stream_stats(redis, settings.keys)
    stats["streams"]["workflow"] == {"stream": "wks:stream:workflow", "length": 120,
                                     "oldestEntryId": "1763...-0", "oldestAgeSeconds": 3.2,
                                     "trimmed": 40}
    stats["lastTrimAt"]  # epoch ms of the trimmer's last pass, or None

One round trip (a pipeline). The trimmed totals live in Redis (`Keys.retention_totals`),
written by whichever worker trims, so any process (the API's /health) can show them.
Also sets the `wks_stream_length` and `wks_stream_oldest_age_seconds` gauges.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from wks import metrics
from wks.events import split_entry_id
from wks.keys import Keys
from wks.redis import text

LAST_RUN_FIELD = "lastRunAt"


async def stream_stats(
    redis: aioredis.Redis, keys: Keys, now_ms: int | None = None
) -> dict[str, Any]:
    """Length, oldest entry (id and age) and entries trimmed so far, for every stream."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    streams = keys.streams
    async with redis.pipeline(transaction=False) as pipe:
        for key in streams.values():
            pipe.xlen(key)
            pipe.xrange(key, count=1)
        pipe.hgetall(keys.retention_totals)
        replies = await pipe.execute()
    totals = {text(k): int(v) for k, v in replies[-1].items()}
    out: dict[str, Any] = {}
    for i, (name, key) in enumerate(streams.items()):
        length = int(replies[2 * i])
        first = replies[2 * i + 1]
        oldest = text(first[0][0]) if first else None
        age = max(0.0, (now - split_entry_id(oldest)[0]) / 1000) if oldest else None
        out[name] = {"stream": key, "length": length, "oldestEntryId": oldest,
                     "oldestAgeSeconds": age, "trimmed": totals.get(name, 0)}
        metrics.STREAM_LENGTH.labels(name).set(length)
        metrics.STREAM_OLDEST_AGE.labels(name).set(age or 0.0)
    return {"streams": out, "lastTrimAt": totals.get(LAST_RUN_FIELD)}


async def stream_groups(redis: aioredis.Redis, stream: str) -> list[dict[str, Any]]:
    """XINFO GROUPS of `stream`; no groups when the stream does not exist yet."""
    try:
        return await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise


async def group_stats(redis: aioredis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """Pending, lag and consumers of one group; None when the group does not exist.

    `lag` comes from XINFO GROUPS on Redis 7+; on 6.2 it is counted (capped at 100,001)
    from the entries after the group's last-delivered id.
    """
    for g in await stream_groups(redis, stream):
        if text(g["name"]) != group:
            continue
        last = text(g["last-delivered-id"])
        lag = g.get("lag")
        if lag is None and "lag" not in g:
            after = await redis.xrange(stream, min=f"({last}", count=100_001)
            lag = len(after)
        oldest = 0
        pending = int(g["pending"])
        if pending:
            first = await redis.xpending_range(stream, group, min="-", max="+", count=1)
            if first:
                oldest = int(first[0]["time_since_delivered"])
        return {
            "pending": pending,
            "lag": int(lag) if lag is not None else None,
            "consumers": int(g["consumers"]),
            "lastDeliveredId": last,
            "oldestPendingIdleMs": oldest,
        }
    return None
