"""Consumer heartbeats: a running reader is seen at once, a stopped one is gone at once, a
killed one (its key expired) is dropped from the group's set by the next reader of it."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.consumers import state_reader
from tests.helpers import wait_for
from wks.config import Settings
from wks.keys import GROUP_STATE
from wks.liveness import LIVE_TTL_MS, Heartbeat, running_consumers
from wks.store import Store

pytestmark = pytest.mark.both_redis


async def test_a_beat_is_seen_until_its_key_expires(
    r: aioredis.Redis, settings: Settings, redis_kind: str
) -> None:
    keys = settings.keys
    assert await running_consumers(r, keys, "g") == []
    beat = Heartbeat(r, keys, "g", "w1")
    await beat.beat()
    await Heartbeat(r, keys, "g", "w2").beat()
    assert await running_consumers(r, keys, "g") == ["w1", "w2"]
    assert 0 < await r.pttl(keys.worker_heartbeat("g", "w1")) <= LIVE_TTL_MS

    await r.delete(keys.worker_heartbeat("g", "w2"))  # as its TTL would, for a killed worker
    assert await running_consumers(r, keys, "g") == ["w1"]
    assert await r.smembers(keys.group_consumers("g")) == {b"w1"}  # w2's name was dropped

    await beat.clear()
    assert await running_consumers(r, keys, "g") == []
    assert await r.exists(keys.group_consumers("g")) == 0


async def test_a_reader_beats_while_it_runs_and_clears_when_it_stops(
    r: aioredis.Redis, settings: Settings, redis_kind: str
) -> None:
    keys = settings.keys
    stop = asyncio.Event()
    async with await Store.open(settings.db_path) as store:
        reader = state_reader(settings, r, store, burst=False, consumer="live")
        task = asyncio.create_task(reader.run(stop))
        try:
            # on a quiet stream: no entry was ever delivered to it, which XINFO can't see
            assert await wait_for(lambda: running_consumers(r, keys, GROUP_STATE), 10,
                                  "the reader's heartbeat") == ["live"]
        finally:
            stop.set()
            await task
    assert await running_consumers(r, keys, GROUP_STATE) == []


async def test_nested_blocks_share_one_heartbeat(
    r: aioredis.Redis, settings: Settings, redis_kind: str
) -> None:
    """A service beats under its reader's name before the reader runs, then runs it: the
    reader's own block leaves the beating to the outer one, which clears it at its end."""
    keys = settings.keys
    beat = Heartbeat(r, keys, "g", "svc")
    async with beat.running():
        await wait_for(lambda: running_consumers(r, keys, "g"), 10, "the first beat")
        async with beat.running():
            pass
        assert await running_consumers(r, keys, "g") == ["svc"]  # the inner end cleared nothing
    assert await running_consumers(r, keys, "g") == []
