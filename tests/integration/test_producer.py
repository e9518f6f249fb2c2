"""The producer library: batching, ids, track(), the offline buffer and the script fallback."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from producers.client import Producer
from tests.helpers import producer_while_down, wait_for, without_scripts
from wks import events as ev
from wks.config import Settings
from wks.errors import BufferFull, RedisUnavailable

pytestmark = pytest.mark.both_redis


async def stream_events(r: aioredis.Redis, stream: str) -> list[ev.WorkflowEvent]:
    return [ev.decode_workflow(f[b"event"]) for _, f in await r.xrange(stream)]


async def test_batch_publish_returns_ids_in_order(settings: Settings, r: aioredis.Redis) -> None:
    """One call appends every event, one entry each, field `event`, ids in order."""
    p = Producer(r, settings.keys)
    batch = [ev.WorkflowProgress(execution_id="e", completed_steps=i, ts=i) for i in range(2500)]
    ids = await p.publish_many(batch)
    assert ids is not None
    assert len(ids) == 2500
    entries = await r.xrange(settings.keys.workflow_stream)
    assert [i.decode() for i, _ in entries] == ids
    assert all(set(f) == {b"event"} for _, f in entries)
    assert [e.completed_steps for e in await stream_events(r, settings.keys.workflow_stream)] \
        == list(range(2500))
    assert p.mode == "script"


async def test_track_emits_started_progress_completed(
    settings: Settings, r: aioredis.Redis
) -> None:
    """track() wraps a block of work: started, one progress per step, completed."""
    p = Producer(r, settings.keys)
    async with p.track("t-1", "etl", total_steps=2, owner="ann") as t:
        await t.step("extract")
        await t.step("load")
    got = await stream_events(r, settings.keys.workflow_stream)
    assert [ev.event_type(e) for e in got] == [
        "workflow.started", "workflow.progress", "workflow.progress", "workflow.completed"]
    assert [getattr(e, "current_step", None) for e in got[1:3]] == ["extract", "load"]
    ids = [e.event_id for e in got]
    assert all(ids)
    assert ids == sorted(ids), "a producer's eventIds increase, keeping same-ms order"


async def test_track_emits_failed_on_exception(settings: Settings, r: aioredis.Redis) -> None:
    """An exception inside track() publishes workflow.failed with the error and re-raises."""
    p = Producer(r, settings.keys)

    async def work() -> None:
        async with p.track("t-2", "etl", total_steps=3) as t:
            await t.step("one")
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        await work()
    last = (await stream_events(r, settings.keys.workflow_stream))[-1]
    assert isinstance(last, ev.WorkflowFailed)
    assert "ZeroDivisionError" in last.error


@pytest.mark.parametrize("count", [3, 2500])
async def test_falls_back_to_pipeline_when_scripts_are_denied(
    settings: Settings, redis_factory: object, count: int
) -> None:
    """Where an ACL forbids EVAL, the producer switches to pipelined XADD and says so
    (one chunk, or several sent on one connection before any reply is read)."""
    server = redis_factory(appendonly=False)  # type: ignore[operator]
    async with without_scripts(server) as (admin, limited):
        p = Producer(limited, settings.keys)
        ids = await p.publish_many(
            [ev.WorkflowCompleted(execution_id="s", ts=i) for i in range(count)])
        assert ids is not None
        assert p.mode == "pipeline"
        entries = await admin.xrange(settings.keys.workflow_stream)
        assert [i.decode() for i, _ in entries] == ids
        assert [ev.decode_workflow(f[b"event"]).ts for _, f in entries] == list(range(count))


class TestOfflineBuffer:
    async def test_buffered_events_arrive_in_order_after_an_outage(
        self, settings: Settings, redis_factory: object
    ) -> None:
        """While Redis is down events wait in the buffer; they are flushed in order."""
        server = redis_factory()  # type: ignore[operator]  # AOF on: the first event survives
        r = aioredis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=2)
        p = Producer(r, settings.keys, buffer_size=100)
        assert await p.progress("b", 0, ts=1) is not None
        server.stop()
        results = [await p.progress("b", i, ts=i + 1) for i in range(1, 51)]
        assert results == [None] * 50
        assert p.buffered == 50
        await asyncio.to_thread(server.start)
        await p.flush(timeout=30)
        assert p.buffered == 0
        got = await stream_events(r, settings.keys.workflow_stream)
        assert [e.completed_steps for e in got] == list(range(51))
        await p.aclose()
        await r.aclose()

    async def test_full_buffer_raises_instead_of_dropping(
        self, settings: Settings, redis_factory: object
    ) -> None:
        """Past the buffer's capacity publish raises BufferFull; what was buffered stays."""
        server = redis_factory(appendonly=False)  # type: ignore[operator]
        async with producer_while_down(server, settings.keys, 5) as (p, r):
            for i in range(5):
                assert await p.completed(f"x-{i}", ts=i) is None
            with pytest.raises(BufferFull, match="5 events"):
                await p.completed("x-5", ts=5)
            assert p.buffered == 5
            await asyncio.to_thread(server.start)
            await wait_for(lambda: p.buffered == 0, 30, "the buffer to flush")
            assert await r.xlen(settings.keys.workflow_stream) == 5

    async def test_unbuffered_producer_raises_when_redis_is_down(
        self, settings: Settings, redis_factory: object
    ) -> None:
        """With buffer_size=0 (the CLI's `wks emit`) an outage is an immediate clear error."""
        server = redis_factory(appendonly=False)  # type: ignore[operator]
        r = aioredis.Redis.from_url(server.url, socket_connect_timeout=0.5)
        server.stop()
        with pytest.raises(RedisUnavailable, match="unreachable"):
            await Producer(r, settings.keys, buffer_size=0).completed("y", ts=1)
        await r.aclose()


async def test_paced_publish_sends_a_tick_of_events_per_call(
    settings: Settings, r: aioredis.Redis
) -> None:
    """At 20,000 events/s the load generator sends what 1 ms holds (20 events) per call,
    not an event or two per wake-up, and publishes every event once, in order."""
    from producers.loadgen import plan
    from producers.loadgen import publish as publish_load

    p = Producer(r, settings.keys, buffer_size=0)
    events = list(plan(1000, 50, seed=3, run="paced"))
    sizes: list[int] = []
    result = await publish_load(p, events, rate=20_000,
                                on_sent=lambda chunk, ids, t: sizes.append(len(chunk)))
    assert result.count == 1000
    assert sum(sizes) == 1000
    assert min(sizes[:-1]) >= 20, sizes  # the last call takes what is left
    got = await stream_events(r, settings.keys.workflow_stream)
    assert [e.event_id for e in got] == [e.event_id for e in events]


async def test_chunks_sent_ahead_survive_a_flushed_script_cache(
    settings: Settings, r: aioredis.Redis
) -> None:
    """A publish of several chunks sends the next one before reading the previous one's
    ids; with the script cache flushed (a Redis restarted empty) every chunk still lands,
    in order, each id returned once."""
    p = Producer(r, settings.keys)
    await p.publish(ev.WorkflowProgress(execution_id="w", completed_steps=0, ts=0))
    await r.script_flush()
    batch = [ev.WorkflowProgress(execution_id="e", completed_steps=i, ts=i) for i in range(3500)]
    ids = await p.publish_many(batch)
    assert p.mode == "script"
    entries = await r.xrange(settings.keys.workflow_stream)
    assert [i.decode() for i, _ in entries[1:]] == ids
    assert [e.completed_steps for e in await stream_events(r, settings.keys.workflow_stream)][1:] \
        == list(range(3500))


async def test_a_failed_chunk_leaves_no_reply_behind(settings: Settings, r: aioredis.Redis) -> None:
    """A chunk refused by Redis (the key is not a stream) fails the publish; the reply of the
    chunk sent behind it is not left on the connection for the next caller to read."""
    p = Producer(r, settings.keys, buffer_size=0)
    wrong = settings.keys.workflow_stream + ":not-a-stream"
    await r.set(wrong, "x")
    batch = [ev.WorkflowProgress(execution_id="f", completed_steps=i, ts=i) for i in range(2500)]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await p.publish_many(batch, wrong)
    for _ in range(3):  # every pooled connection answers its own commands
        ids = await p.publish_many(batch[:1500])
        assert ids is not None
        assert await r.xrange(settings.keys.workflow_stream, min=ids[0], max=ids[0])
        assert len(ids) == len(set(ids)) == 1500
    assert await r.get(wrong) == b"x"
