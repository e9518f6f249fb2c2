"""A batch committed but not acknowledged (XACK refused) is acknowledged later, not re-applied."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import redis.asyncio as aioredis

from consumers.reader import GroupReader
from consumers.state import StateHandler
from producers.client import Producer
from tests.consumers import stored_states
from tests.helpers import wait_for
from tests.workload import as_dicts, reference, workload
from wks.config import Settings
from wks.events import StreamEntry, WorkflowEvent
from wks.keys import GROUP_STATE
from wks.store import LogRows, Store


class Counting:
    """The real state handler, counting the entries it is asked to apply."""

    def __init__(self, inner: StateHandler) -> None:
        self.inner = inner
        self.applied: list[str] = []

    def decode(self, raw: bytes) -> WorkflowEvent:
        return self.inner.decode(raw)

    async def prepare(self, items: Sequence[StreamEntry]) -> LogRows:
        return await self.inner.prepare(items)

    async def apply(self, items: Sequence[StreamEntry], prepared: LogRows | None = None) -> None:
        await self.inner.apply(items, prepared)
        self.applied += [item.entry_id for item in items]


async def test_a_refused_acknowledgement_is_retried_alone(
    settings: Settings, redis_factory: object
) -> None:
    """XACK refused after the commit: the entries stay pending, the consumer says so, and
    once XACK works again they are acknowledged without being applied a second time."""
    server = redis_factory(appendonly=False)  # type: ignore[operator]
    admin = aioredis.Redis.from_url(server.url)
    # a real refusal from Redis, for XACK alone (inside the acknowledgement script too)
    await admin.execute_command("ACL", "SETUSER", "noack", "on", ">pw", "~*", "&*", "+@all",
                                "-xack")
    r = aioredis.Redis.from_url(f"redis://noack:pw@127.0.0.1:{server.port}/0")
    keys = settings.keys
    stop = asyncio.Event()
    try:
        events = workload(300, 20, random.Random(12))
        ids = await Producer(r, keys).publish_many(events)
        assert ids is not None
        async with await Store.open(settings.db_path) as store:
            handler = Counting(StateHandler(store, r, keys, settings.state_ttl))
            reader = GroupReader(r, keys, name="workflow", stream=keys.workflow_stream,
                                 group=GROUP_STATE, handler=handler, block_ms=50)
            task = asyncio.create_task(reader.run(stop))
            await wait_for(lambda: not reader.status.redis_ok, 10, "the refusal reported")
            assert (reader.status.last_error or "").startswith("redis (acknowledgement)")
            assert reader.status.apply_ok
            assert sorted(handler.applied) == sorted(ids)  # committed...
            assert await store.scalar("SELECT COUNT(*) FROM event_log") == len(ids)
            pending = await admin.xpending(keys.workflow_stream, GROUP_STATE)
            assert pending["pending"] == len(ids)  # ...and not acknowledged

            await admin.execute_command("ACL", "SETUSER", "noack", "+xack")
            await wait_for(lambda: reader.status.applied == len(ids), 20, "acknowledged")
            assert reader.status.ok
            pending = await admin.xpending(keys.workflow_stream, GROUP_STATE)
            assert pending["pending"] == 0
            assert sorted(handler.applied) == sorted(ids)  # applied once, not again
            assert await stored_states(store) == as_dicts(
                reference(list(zip(events, ids, strict=True))))
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        stop.set()
        await r.aclose()
        await admin.aclose()
