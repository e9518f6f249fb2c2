"""`/health` checks: database, redis, diskSpace, consumers, and (informational) streams.

The overall status is `unhealthy` (HTTP 503) when the database does not answer or the disk
under it is nearly full: nothing can be recorded. It is `degraded` (HTTP 200) when Redis or a
consumer is in trouble but SQLite still answers reads; `healthy` otherwise. Messages name no
server path (SPEC section 8).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from wks import catch_up
from wks.config import Settings
from wks.keys import GROUP_BACKUP, GROUP_STATE
from wks.liveness import running_consumers
from wks.redis import REDIS_DOWN
from wks.store import Store
from wks.stream_stats import group_stats, stream_stats

MIN_FREE_BYTES = 100 * 1024 * 1024  # below this the store and its backups cannot be trusted
REDIS_TIMEOUT = 1.0
_DOWN: tuple[type[BaseException], ...] = (*REDIS_DOWN, TimeoutError, ResponseError)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


async def database(store: Store) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        version = await store.scalar("SELECT MAX(version) FROM schema_version")
        unfinished = await catch_up.pending(store)
    except Exception as exc:  # any failure of the store is what this check reports
        return {"status": "unhealthy", "error": f"query failed: {type(exc).__name__}"}
    out = {"status": "healthy", "latencyMs": _ms(started), "schemaVersion": int(version or 0)}
    if unfinished is not None:  # a restore died folding the stream in: state is behind
        out.update(status="degraded", restoreCatchUpFrom=unfinished)
    return out


async def redis_check(redis: aioredis.Redis, mode: str) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            await redis.ping()
    except _DOWN as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else "unreachable"
        return {"status": "unhealthy", "mode": mode, "error": reason}
    return {"status": "healthy", "mode": mode, "latencyMs": _ms(started)}


def disk_space(settings: Settings) -> dict[str, Any]:
    directory = settings.db_path.parent
    try:
        usage = shutil.disk_usage(directory if directory.exists() else ".")
    except OSError as exc:
        return {"status": "unhealthy", "error": f"disk usage unavailable: {exc.strerror}"}
    status = "healthy" if usage.free >= MIN_FREE_BYTES else "unhealthy"
    return {"status": status, "freeBytes": usage.free, "totalBytes": usage.total,
            "thresholdBytes": MIN_FREE_BYTES}


async def consumers(
    redis: aioredis.Redis, settings: Settings, readers: dict[str, Any]
) -> dict[str, Any]:
    keys = settings.keys
    groups: dict[str, Any] = {}
    status = "healthy"
    try:
        async with asyncio.timeout(REDIS_TIMEOUT * 2):
            for group, stream in ((GROUP_STATE, keys.workflow_stream),
                                  (GROUP_BACKUP, keys.backup_stream)):
                info = await group_stats(redis, stream, group)
                if info is None:
                    groups[group] = {"exists": False}
                    continue
                running = await running_consumers(redis, keys, group)
                groups[group] = {"exists": True, **info, "activeConsumers": len(running)}
    except _DOWN:
        return {"status": "unhealthy", "error": "redis unreachable", "groups": {}}
    for info in groups.values():
        # work is waiting and no consumer is running to do it (a killed worker's name stays
        # registered in its group: the heartbeats tell, wks.liveness)
        if info["exists"] and info["activeConsumers"] == 0 and (info["pending"] or info["lag"]):
            info["stalled"] = True
            status = "degraded"
    for group, reader in readers.items():
        reader_status = getattr(reader, "status", None)
        entry = groups.setdefault(group, {"exists": False})
        entry["inProcess"] = True
        entry["ok"] = bool(getattr(reader_status, "ok", True))
        if not entry["ok"]:
            status = "degraded"
    return {"status": status, "groups": groups}


async def stream_check(redis: aioredis.Redis, settings: Settings) -> dict[str, Any]:
    """Length, oldest entry age and trimmed totals of every stream (informational)."""
    try:
        async with asyncio.timeout(REDIS_TIMEOUT * 2):
            stats = await stream_stats(redis, settings.keys)
    except _DOWN:
        return {"status": "degraded", "error": "redis unreachable"}
    return {"status": "healthy", **stats}


async def report(
    store: Store, redis: aioredis.Redis, settings: Settings, runtime: Any | None
) -> tuple[dict[str, Any], int]:
    """The /health body and its HTTP status."""
    mode = getattr(runtime, "mode", None) or (
        "external" if settings.redis_url_source in ("env", "toml") else "managed")
    readers = dict(getattr(runtime, "readers", None) or {})
    db, rc, cons, streams = await asyncio.gather(
        database(store), redis_check(redis, mode), consumers(redis, settings, readers),
        stream_check(redis, settings))
    checks = {"database": db, "redis": rc, "diskSpace": disk_space(settings), "consumers": cons,
              "streams": streams}
    if db["status"] == "unhealthy" or checks["diskSpace"]["status"] != "healthy":
        overall = "unhealthy"
    elif any(c["status"] != "healthy" for c in checks.values()):
        overall = "degraded"
    else:
        overall = "healthy"
    return {"status": overall, "checks": checks}, 503 if overall == "unhealthy" else 200
