"""Retention: trimming by age never passes what a group still needs; event_log pruning."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from consumers.retention import prune_event_log, retention_service, run_once, trim_stream
from tests.audit.conftest import add, fold
from wks.config import Settings
from wks.keys import EVENT_FIELD, GROUP_STATE
from wks.locks import Lock
from wks.store import Store
from wks.stream_stats import stream_stats

DAY_MS = 86_400_000


def ms() -> int:
    return int(time.time() * 1000)


async def old_and_new(r: aioredis.Redis, stream: str, old: int = 10, new: int = 3) -> list[str]:
    """`old` entries ten days old, then `new` entries from now."""
    base = ms() - 10 * DAY_MS
    ids = [(await r.xadd(stream, {EVENT_FIELD: b"{}"}, id=f"{base + i}-0")).decode()
           for i in range(old)]
    ids += [(await r.xadd(stream, {EVENT_FIELD: b"{}"})).decode() for _ in range(new)]
    return ids


async def ids_in(r: aioredis.Redis, stream: str) -> list[str]:
    return [m.decode() for m, _ in await r.xrange(stream)]


@pytest.mark.both_redis
async def test_stopped_group_keeps_its_pending_and_undelivered_entries(
    r: aioredis.Redis, settings: Settings
) -> None:
    """A group whose consumer died holding entries keeps them; acknowledged ones are trimmed."""
    stream = settings.keys.backup_stream
    ids = await old_and_new(r, stream)
    await r.xgroup_create(stream, "live", id="0")
    await r.xgroup_create(stream, "stopped", id="0")
    await r.xreadgroup("live", "c1", {stream: ">"})
    await r.xack(stream, "live", *ids)
    await r.xreadgroup("stopped", "dead-consumer", {stream: ">"}, count=5)  # never acked

    assert await trim_stream(r, stream, 86_400) == 0
    assert await ids_in(r, stream) == ids

    await r.xack(stream, "stopped", *ids[:3])
    assert await trim_stream(r, stream, 86_400) == 3
    assert await ids_in(r, stream) == ids[3:]

    # nothing pending, but entries 5.. were never delivered to the stopped group
    await r.xack(stream, "stopped", *ids[3:5])
    assert await trim_stream(r, stream, 86_400) == 2
    assert await ids_in(r, stream) == ids[5:]

    await r.xgroup_destroy(stream, "stopped")
    assert await trim_stream(r, stream, 86_400) == 5
    assert await ids_in(r, stream) == ids[10:]  # recent entries stay whatever happens


async def test_a_pass_trims_folded_entries_and_reports_totals(
    r: aioredis.Redis, settings: Settings, make_settings
) -> None:
    """Entries the state group folded and acknowledged go; totals reach stream_stats."""
    stream = settings.keys.workflow_stream
    base = ms() - 10 * DAY_MS
    for i in range(4):
        await add(r, settings, {"type": "workflow.progress", "executionId": f"x{i}",
                                "completedSteps": 1, "ts": base}, f"{base + i}-0")
    await add(r, settings, {"type": "workflow.progress", "executionId": "x9",
                            "completedSteps": 1, "ts": base})
    await fold(settings, r)
    await r.xadd(settings.keys.dead_stream, {"reason": b"old"}, id=f"{base}-0")
    async with await Store.open(settings.db_path) as store:
        result = await run_once(r, make_settings(stream_retention=86_400.0), store)
    assert result is not None
    assert result["trimmed"] == {"workflow": 4, "backup": 0, "results": 0, "dead": 1}
    stats = await stream_stats(r, settings.keys)
    assert stats["streams"]["workflow"]["length"] == 1
    assert stats["streams"]["workflow"]["trimmed"] == 4
    assert stats["streams"]["dead"]["length"] == 0
    assert 0 <= stats["streams"]["workflow"]["oldestAgeSeconds"] < 3600
    assert stats["lastTrimAt"] is not None
    # the pass trimmed what was folded; the state group is untouched
    info = {g["name"].decode(): g for g in await r.xinfo_groups(stream)}
    assert info[GROUP_STATE]["pending"] == 0


async def test_one_pass_at_a_time_under_the_trim_lock(
    r: aioredis.Redis, settings: Settings
) -> None:
    """While another worker holds lock `trim` the pass is skipped."""
    other = Lock(r, settings.keys, "trim", ttl=30)
    assert await other.acquire()
    try:
        async with await Store.open(settings.db_path) as store:
            assert await run_once(r, settings, store) is None
    finally:
        await other.release()

    @dataclass
    class Rt:
        settings: Settings
        redis: aioredis.Redis

    await retention_service(Rt(settings, r), burst=True)(asyncio.Event())
    assert await r.hget(settings.keys.retention_totals, "lastRunAt") is not None


async def test_event_log_is_pruned_per_execution_whole(
    r: aioredis.Redis, settings: Settings
) -> None:
    """An idle execution's log goes entirely; one with a recent event keeps all of it."""
    for x in ("idle", "busy"):
        for step in (1, 2):
            await add(r, settings, {"type": "workflow.progress", "executionId": x,
                                    "completedSteps": step, "ts": step, "eventId": f"{x}{step}"})
    await fold(settings, r)
    with sqlite3.connect(settings.db_path) as conn:
        conn.execute("UPDATE event_log SET applied_at = applied_at - ?"
                     " WHERE event_key IN ('idle1', 'idle2', 'busy1')", (40 * DAY_MS,))
    async with await Store.open(settings.db_path) as store:
        assert await prune_event_log(store, 30 * 86_400) == 2
        assert [e["eventId"] for e in await store.events_for("busy")] == ["busy1", "busy2"]
        assert await store.events_for("idle") == []
        assert await store.get_state("idle") is not None  # the state itself stays


@pytest.mark.parametrize("groups", [("state",), ("backup",)])
async def test_a_worker_for_one_group_still_trims(
    r: aioredis.Redis, settings: Settings, groups: tuple[str, ...]
) -> None:
    """`wks worker --group state` (or backup) runs the trimmer too: a deployment with one
    worker per group must not grow its streams without bound."""
    from tests.backup.conftest import WKS, env_for

    stream = settings.keys.results_stream  # no group reads it: trimmed by age alone
    ids = await old_and_new(r, stream)
    args = [arg for group in groups for arg in ("--group", group)]
    proc = await asyncio.create_subprocess_exec(
        *WKS, "worker", *args, "--burst", env=env_for(settings, WKS_STREAM_RETENTION="1d"),
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert await ids_in(r, stream) == ids[10:]


async def test_a_stream_whose_own_group_is_missing_is_not_trimmed(
    r: aioredis.Redis, settings: Settings, make_settings
) -> None:
    """With no `state` group yet (a worker running only the backup group, first), the
    workflow stream keeps every entry: the state group has yet to read them. Once the group
    exists, what it has read and acknowledged goes as usual."""
    keys = settings.keys
    ids = await old_and_new(r, keys.workflow_stream)
    dead = await old_and_new(r, keys.dead_stream)
    async with await Store.open(settings.db_path) as store:
        once = await run_once(r, make_settings(stream_retention=86_400.0), store)
        assert once is not None
        assert (once["trimmed"]["workflow"], once["trimmed"]["dead"]) == (0, 10)
        assert await ids_in(r, keys.workflow_stream) == ids
        assert await ids_in(r, keys.dead_stream) == dead[10:]
        await r.xgroup_create(keys.workflow_stream, GROUP_STATE, id="0")
        await r.xreadgroup(GROUP_STATE, "c1", {keys.workflow_stream: ">"}, count=4)
        await r.xack(keys.workflow_stream, GROUP_STATE, *ids[:4])
        again = await run_once(r, make_settings(stream_retention=86_400.0), store)
    assert again is not None
    assert again["trimmed"]["workflow"] == 4
    assert await ids_in(r, keys.workflow_stream) == ids[4:]
