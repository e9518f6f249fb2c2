"""Which consumers of a group are running: a heartbeat that each consumer keeps itself.

XINFO CONSUMERS cannot tell. Before Redis 7.2 a consumer's `idle` counts from the last entry
delivered to it, so a worker waiting on a quiet stream looks like one that was killed, and a
new consumer is not listed at all until its first delivery. So every reader sets
`{prefix}:consumer:{group}:{name}` with a TTL of LIVE_TTL_MS every BEAT_EVERY seconds and
keeps its name in the set `{prefix}:consumers:{group}`; a clean stop deletes both. The TTL
runs on Redis's clock, so no host's clock matters. Running consumers are the names whose key
still exists; names whose key expired (a killed worker) are dropped from the set by whoever
asks next.

    async with Heartbeat(redis, keys, "state", name).running():  # GroupReader.run does
        ...
    await running_consumers(redis, keys, "state")  # ["host-123-ab12cd", ...]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from wks.aio import wait_stop
from wks.keys import Keys
from wks.redis import REDIS_DOWN, REDIS_UNWELL, text

LIVE_TTL_MS = 10_000  # a consumer whose heartbeat is older than this is taken for gone
BEAT_EVERY = 2.0  # seconds between two heartbeats: four can fail before the key expires


class Heartbeat:
    """One consumer's heartbeat (see the module's text)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, group: str, consumer: str) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.key = keys.worker_heartbeat(group, consumer)
        self.registry = keys.group_consumers(group)
        self._holders = 0  # blocks inside `running()`: one beating task for all of them

    async def beat(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, "1", px=LIVE_TTL_MS)
            pipe.sadd(self.registry, self.consumer)
            await pipe.execute()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until `stop` is set or the task is cancelled. A failed beat is only skipped
        (Redis trouble is the reader's to report), never the end of the beating."""
        log = logger.bind(group=self.group, consumer=self.consumer)
        while not stop.is_set():
            try:
                await self.beat()
            except (*REDIS_DOWN, ResponseError) as exc:
                log.debug("heartbeat failed: {}", exc)
            except Exception as exc:
                log.opt(exception=exc).warning("heartbeat failed: {}", exc)
            await wait_stop(stop, BEAT_EVERY)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Beat while the block runs; gone at once when it ends. Nested blocks share the
        outer one's beating (a service that works before its reader runs, then runs it)."""
        self._holders += 1
        if self._holders > 1:
            try:
                yield
            finally:
                self._holders -= 1
            return
        stop = asyncio.Event()
        task = asyncio.create_task(self.run(stop))
        try:
            yield
        finally:
            self._holders -= 1
            stop.set()
            task.cancel()
            await self.clear()

    async def clear(self, timeout: float = 1.0) -> None:
        """On a clean stop: gone at once, not LIVE_TTL_MS later. Best effort, bounded."""
        with contextlib.suppress(*REDIS_UNWELL):
            async with asyncio.timeout(timeout):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.delete(self.key)
                    pipe.srem(self.registry, self.consumer)
                    await pipe.execute()


async def running_consumers(redis: aioredis.Redis, keys: Keys, group: str) -> list[str]:
    """The consumers of `group` whose heartbeat is fresh, sorted by name."""
    registry = keys.group_consumers(group)
    names = sorted(text(n) for n in await redis.smembers(registry))
    if not names:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(keys.worker_heartbeat(group, name))
        found = await pipe.execute()
    gone = [name for name, n in zip(names, found, strict=True) if not n]
    if gone:
        # a beat between the EXISTS above and this SREM is undone for at most BEAT_EVERY
        await redis.srem(registry, *gone)
    return [name for name, n in zip(names, found, strict=True) if n]
