"""Departed consumers leave their group; consumers holding entries, or reading, stay."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from consumers.prune import ConsumerPruner
from producers.client import Producer
from tests.consumers import state_reader
from tests.helpers import without_scripts
from tests.workload import workload
from wks.config import Settings
from wks.liveness import Heartbeat
from wks.redis import text
from wks.store import Store


async def _names(r: aioredis.Redis, stream: str, group: str) -> set[str]:
    return {text(c["name"]) for c in await r.xinfo_consumers(stream, group)}


async def _read_one(r: aioredis.Redis, stream: str, group: str, consumer: str) -> str:
    reply = await r.xreadgroup(group, consumer, {stream: ">"}, count=1)
    return text(reply[0][1][0][0])


@pytest.mark.both_redis
async def test_only_idle_consumers_without_pending_entries_are_removed(
    r: aioredis.Redis, settings: Settings, prefix: str, redis_kind: str
) -> None:
    stream, group, keys = f"{prefix}:s", "g", settings.keys
    await r.xgroup_create(stream, group, id="0", mkstream=True)
    for i in range(4):
        await r.xadd(stream, {"event": str(i)})
    done = await _read_one(r, stream, group, "gone-empty")
    await r.xack(stream, group, done)
    await _read_one(r, stream, group, "gone-holding")  # stays pending: claimable later
    await _read_one(r, stream, group, "me")
    await r.xack(stream, group, await _read_one(r, stream, group, "quiet"))

    # everyone read just now: with an hour's idleness required, nobody goes
    assert await ConsumerPruner(r, keys, stream, group, "me", 3600).prune() == 0
    assert await _names(r, stream, group) == {"gone-empty", "gone-holding", "me", "quiet"}

    await Heartbeat(r, keys, group, "quiet").beat()  # running, nothing delivered for long
    removed = await ConsumerPruner(r, keys, stream, group, "me", 0).prune()
    assert removed == 1
    # the caller is kept, and so is a consumer with a heartbeat
    assert await _names(r, stream, group) == {"gone-holding", "me", "quiet"}
    pending = await r.xpending(stream, group)
    assert pending["pending"] == 2  # nothing pending was dropped with a consumer


@pytest.mark.both_redis
async def test_reader_removes_departed_consumers_when_it_starts(
    settings: Settings, r: aioredis.Redis, redis_kind: str
) -> None:
    keys = settings.keys
    events = workload(20, 4, random.Random(3))
    ids = await Producer(r, keys).publish_many(events)
    assert ids is not None
    async with await Store.open(settings.db_path) as store:
        first = state_reader(settings, r, store, consumer="first")
        await first.run(asyncio.Event())
        assert first.status.applied == len(events)
        assert "first" in await _names(r, keys.workflow_stream, "state")

        second = state_reader(settings, r, store, consumer="second", prune_idle=0)
        await second.run(asyncio.Event())
    assert "first" not in await _names(r, keys.workflow_stream, "state")
    assert (await r.xpending(keys.workflow_stream, "state"))["pending"] == 0


async def test_nothing_is_removed_where_scripts_are_refused(redis_factory: object) -> None:
    server = redis_factory(appendonly=False)  # type: ignore[operator]
    async with without_scripts(server) as (_admin, r):
        await r.xgroup_create("s", "g", id="0", mkstream=True)
        await r.xadd("s", {"event": "x"})
        await r.xack("s", "g", await _read_one(r, "s", "g", "gone"))
        pruner = ConsumerPruner(r, Settings().keys, "s", "g", "me", 0)
        assert await pruner.prune() == 0
        assert await pruner.prune() == 0  # refused once: not tried again
        assert pruner._script is None
        assert await _names(r, "s", "g") == {"gone"}
