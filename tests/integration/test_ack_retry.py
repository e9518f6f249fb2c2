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
from wks.batch_rows import LogRows
from wks.config import Settings
from wks.events import StreamEntry, WorkflowEvent
from wks.keys import GROUP_STATE
from wks.store import Store


class Counting:
    """The real state handler, counting the entries it is asked to apply."""

    def __init__(self, inner: StateHandler) -> None:
        self.inner = inner
        self.applied: list[str] = []

    def decode(self, raw: bytes) -> WorkflowEvent:
        return self.inner.decode(raw)

    def decode_many(self, raws: list[bytes]) -> list[WorkflowEvent] | None:
        return self.inner.decode_many(raws)

    async def prepare(self, items: Sequence[StreamEntry]) -> LogRows:
        return await self.inner.prepare(items)

    async def apply(self, items: Sequence[StreamEntry], prepared: LogRows | None = None) -> None:
        await self.inner.apply(items, prepared)
        self.applied += [item.entry_id for item in items]


async def _refusing(redis_factory: object) -> tuple[aioredis.Redis, aioredis.Redis]:
    """An admin client and a client whose XACK Redis refuses (inside scripts too)."""
    server = redis_factory(appendonly=False)  # type: ignore[operator]
    admin = aioredis.Redis.from_url(server.url)
    await admin.execute_command("ACL", "SETUSER", "noack", "on", ">pw", "~*", "&*", "+@all",
                                "-xack")
    return admin, aioredis.Redis.from_url(f"redis://noack:pw@127.0.0.1:{server.port}/0")


def _split(events: list[WorkflowEvent], at: int) -> tuple[list[WorkflowEvent], ...]:
    return events[:at], events[at:]


def _reader(settings: Settings, r: aioredis.Redis, store: Store) -> tuple[GroupReader, Counting]:
    keys = settings.keys
    handler = Counting(StateHandler(store, r, keys, settings.state_ttl))
    reader = GroupReader(r, keys, name="workflow", stream=keys.workflow_stream,
                         group=GROUP_STATE, handler=handler, block_ms=50)
    return reader, handler


async def test_a_refused_acknowledgement_is_retried_alone(
    settings: Settings, redis_factory: object
) -> None:
    """XACK refused after the commit: the entries stay pending, the consumer says so (and
    goes on saying so while it reads and applies more), and once XACK works again they are
    acknowledged without being applied a second time."""
    admin, r = await _refusing(redis_factory)
    keys = settings.keys
    stop = asyncio.Event()
    try:
        events, more = _split(workload(400, 30, random.Random(12)), 300)
        ids = await Producer(r, keys).publish_many(events)
        assert ids is not None
        async with await Store.open(settings.db_path) as store:
            reader, handler = _reader(settings, r, store)
            task = asyncio.create_task(reader.run(stop))
            await wait_for(lambda: not reader.status.ok, 10, "the refusal reported")
            assert (reader.status.last_error or "").startswith("redis (acknowledgement)")
            assert reader.status.apply_ok
            assert sorted(handler.applied) == sorted(ids)  # committed...
            assert await store.scalar("SELECT COUNT(*) FROM event_log") == len(ids)
            pending = await admin.xpending(keys.workflow_stream, GROUP_STATE)
            assert pending["pending"] == len(ids)  # ...and not acknowledged

            # more events are read and applied meanwhile; the status stays not ok throughout
            more_ids = await Producer(r, keys).publish_many(more)
            assert more_ids is not None
            seen_ok: list[bool] = []
            await wait_for(lambda: seen_ok.append(reader.status.ok)
                           or set(more_ids) <= set(handler.applied), 20, "the second batch")
            assert not any(seen_ok)
            assert reader.status.last_error.startswith("redis (acknowledgement)")  # type: ignore[union-attr]

            await admin.execute_command("ACL", "SETUSER", "noack", "+xack")
            everything = ids + more_ids
            await wait_for(lambda: reader.status.applied == len(everything), 20, "acknowledged")
            assert reader.status.ok
            assert reader.status.last_error is None
            pending = await admin.xpending(keys.workflow_stream, GROUP_STATE)
            assert pending["pending"] == 0
            assert sorted(handler.applied) == sorted(everything)  # each applied once
            assert await stored_states(store) == as_dicts(
                reference(list(zip(events + more, everything, strict=True))))
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        stop.set()
        await r.aclose()
        await admin.aclose()


async def test_a_stop_during_the_retries_leaves_the_entries_pending(
    settings: Settings, redis_factory: object
) -> None:
    """Stopping while XACK is refused returns promptly; the committed entries stay pending
    for whoever claims them, and their events are logged once."""
    admin, r = await _refusing(redis_factory)
    keys = settings.keys
    stop = asyncio.Event()
    try:
        ids = await Producer(r, keys).publish_many(workload(50, 5, random.Random(14)))
        assert ids is not None
        async with await Store.open(settings.db_path) as store:
            reader, _handler = _reader(settings, r, store)
            task = asyncio.create_task(reader.run(stop))
            await wait_for(lambda: not reader.status.ack_ok, 10, "the refusal reported")
            stop.set()
            await asyncio.wait_for(task, 10)
            assert await store.scalar("SELECT COUNT(*) FROM event_log") == len(ids)
        pending = await admin.xpending(keys.workflow_stream, GROUP_STATE)
        assert pending["pending"] == len(ids)
    finally:
        stop.set()
        await r.aclose()
        await admin.aclose()
