"""The producer library refuses, before publishing anything, what the consumers would refuse."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from producers.checks import _split, encode_checked
from producers.client import Producer
from producers.loadgen import plan
from tests.helpers import producer_while_down
from wks import events as ev
from wks.config import Settings
from wks.errors import BadEventError
from wks.events import plainly_valid

pytestmark = pytest.mark.both_redis


async def nothing_published(r: aioredis.Redis, settings: Settings) -> bool:
    keys = (settings.keys.workflow_stream, settings.keys.backup_stream)
    return sum([await r.xlen(k) for k in keys]) == 0


async def stream_events(r: aioredis.Redis, settings: Settings) -> list[ev.WorkflowEvent]:
    return [ev.decode_workflow(f[b"event"])
            for _, f in await r.xrange(settings.keys.workflow_stream)]


class TestRefusedBeforePublishing:
    async def test_each_event_method_refuses_an_invalid_event(
        self, settings: Settings, r: aioredis.Redis
    ) -> None:
        """A bad id, a negative count, a bound broken, oversized data, a float ts: each
        raises BadEventError naming the key, and none reaches the stream (or the dead one)."""
        p = Producer(r, settings.keys)
        calls: list[tuple[Any, str]] = [
            (p.progress("bad id", 5), "executionId"),
            (p.progress("ok", -5), "completedSteps"),
            (p.started("ok", "wf", total_steps=2_000_000), "totalSteps"),
            (p.started("ok", "wf/1", total_steps=1), "workflowId"),
            (p.completed("ok", data={"blob": "x" * 70_000}), "data is"),
            (p.completed("ok", ts=1.5), "ts"),  # type: ignore[arg-type]
            (p.completed("ok", ts=-1), "ts"),
            (p.progress("ok", 1, current_step="s" * 257), "currentStep"),
            (p.cancelled("ok", event_id="e" * 65), "eventId"),
            (p.completed("ok", data={"n": 1 << 64}), "integer in data"),
            (p.request_backup("r-1", backup_type="weekly"), "backupType"),
            (p.request_backup("r 1"), "requestId"),
        ]
        for call, where in calls:
            with pytest.raises(BadEventError, match="not published") as info:
                await call
            assert where in str(info.value)
        assert await nothing_published(r, settings)
        assert p.buffered == 0

    async def test_payloads_are_judged_and_published_as_they_are(
        self, settings: Settings, r: aioredis.Redis
    ) -> None:
        """JSON handed over as bytes (the HTTP ingest's, unknown keys kept) is judged like
        events: one the consumers would refuse stops the call before anything is sent; the
        rest go to the stream byte for byte."""
        p = Producer(r, settings.keys)
        good = b'{"type":"workflow.completed","executionId":"pj","ts":1,"extra":[1,2]}'
        bad = b'{"type":"workflow.completed","executionId":"pj","ts":"1"}'
        with pytest.raises(BadEventError, match=r"payload 2 of 2 not published.*ts"):
            await p.publish_payloads([good, bad])
        assert await nothing_published(r, settings)
        (entry_id,) = await p.publish_payloads([good])
        sent = await r.xrange(settings.keys.workflow_stream)
        assert [(i.decode(), f[b"event"]) for i, f in sent] == [(entry_id, good)]
        with pytest.raises(BadEventError, match="payload not published"):
            await p.publish_payloads([good], settings.keys.backup_stream)  # backup rules

    @pytest.mark.parametrize("size", [10, 1000])
    async def test_a_batch_with_one_bad_event_publishes_none_of_it(
        self, settings: Settings, r: aioredis.Redis, size: int
    ) -> None:
        """Up to a chunk (1,000), the whole batch is judged before anything is sent; the
        error says which event."""
        p = Producer(r, settings.keys)
        batch: list[ev.WorkflowEvent] = [
            ev.WorkflowProgress(execution_id="b", completed_steps=i, ts=i) for i in range(size)]
        batch[size - 2] = ev.WorkflowProgress(execution_id="b\n", completed_steps=0, ts=0)
        with pytest.raises(BadEventError, match=f"event {size - 1} of {size} "
                                                r"\(workflow.progress\).*executionId"):
            await p.publish_many(batch)
        assert await nothing_published(r, settings)
        del batch[size - 2]
        assert len(await p.publish_many(batch) or []) == size - 1

    @pytest.mark.parametrize("bad", [0, 999, 1000, 2600])
    async def test_a_big_publish_stops_before_the_chunk_of_a_bad_event(
        self, settings: Settings, r: aioredis.Redis, bad: int
    ) -> None:
        """Past one chunk each chunk is judged as the one before it is appended: the chunks
        before the bad event's are published, in order, and the error says so; nothing from
        its chunk on is."""
        p = Producer(r, settings.keys)
        batch: list[ev.WorkflowEvent] = [
            ev.WorkflowProgress(execution_id="b", completed_steps=i, ts=i) for i in range(3500)]
        batch[bad] = ev.WorkflowProgress(execution_id="b", completed_steps=-1, ts=0)
        before = bad // 1000 * 1000
        with pytest.raises(BadEventError, match=f"event {bad + 1} of 3500 ") as info:
            await p.publish_many(batch)
        assert (f"the {before} events before its chunk were published" in str(info.value)) \
            == (before > 0)
        assert [e.completed_steps for e in await stream_events(r, settings)] \
            == list(range(before))
        assert len(await p.publish_many(batch[:bad]) or []) == bad  # the connection is clean

    async def test_a_connection_lost_mid_stream_buffers_up_to_the_bad_chunk(
        self, settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The connection drops while chunk 2's reply is awaited (chunks 2 and 3 sent,
        unconfirmed) and chunk 4 holds a bad event: chunks 2 and 3 are buffered, not lost,
        and the error says what went where."""
        p = Producer(r, settings.keys, buffer_size=10_000)
        pool = r.connection_pool
        real_get = pool.get_connection

        async def dropping(*args: object, **kwargs: object) -> object:
            conn = await real_get(*args, **kwargs)
            real_read = conn.read_response
            reads = iter(range(1, 10**6))

            async def read_response(*a: object, **k: object) -> object:
                if next(reads) == 2:  # the connection dies under chunk 2's reply
                    raise RedisConnectionError("connection lost")
                return await real_read(*a, **k)

            conn.read_response = read_response
            return conn

        monkeypatch.setattr(pool, "get_connection", dropping)
        batch: list[ev.WorkflowEvent] = [
            ev.WorkflowProgress(execution_id="b", completed_steps=i, ts=i) for i in range(3500)]
        batch[3200] = ev.WorkflowProgress(execution_id="b", completed_steps=-1, ts=0)
        with pytest.raises(BadEventError) as info:
            await p.publish_many(batch)
        assert "event 3201 of 3500 " in str(info.value)
        assert "the 1000 events before were published and the 2000 after them buffered" \
            in str(info.value)
        assert p.buffered == 2000
        await p.aclose()

    async def test_an_invalid_event_is_refused_while_redis_is_down_too(
        self, settings: Settings, redis_factory: object
    ) -> None:
        """The buffer never takes an event it would flush to the dead-letter stream."""
        server = redis_factory(appendonly=False)  # type: ignore[operator]
        async with producer_while_down(server, settings.keys, 10) as (p, r):
            assert await p.progress("down", 1, ts=1) is None
            with pytest.raises(BadEventError):
                await p.progress("down", -1, ts=2)
            assert p.buffered == 1
            await asyncio.to_thread(server.start)
            await p.flush(timeout=30)
            assert [e.completed_steps for e in await stream_events(r, settings)] == [1]


def _bad_or_edge_events() -> list[ev.WorkflowEvent]:
    """Events at and past every bound the consumer checks (valid ones included)."""
    deep: Any = 1
    for _ in range(128):
        deep = [deep]
    deeper: Any = [deep]
    x = "x"
    return [
        ev.WorkflowProgress(execution_id=x, completed_steps=(1 << 63) - 1, ts=(1 << 63) - 1),
        ev.WorkflowProgress(execution_id=x, completed_steps=1 << 63, ts=1),
        ev.WorkflowProgress(execution_id=x, completed_steps=1, ts=1 << 63),
        ev.WorkflowStarted(execution_id="a" * 128, workflow_id=x, total_steps=1_000_000, ts=1),
        ev.WorkflowStarted(execution_id="a" * 129, workflow_id=x, total_steps=1, ts=1),
        ev.WorkflowStarted(execution_id=x, workflow_id="", total_steps=1, ts=1),
        ev.WorkflowStarted(execution_id=x, workflow_id="é", total_steps=1, ts=1),
        ev.WorkflowStarted(execution_id=x, workflow_id="A-z.0_9:@", total_steps=1, ts=1),
        ev.WorkflowCompleted(execution_id=x, data={"d": deep}, ts=1),
        ev.WorkflowCompleted(execution_id=x, data={"d": deeper}, ts=1),
        ev.WorkflowCompleted(execution_id=x, data={"s": "[" * 300}, ts=1),
        ev.WorkflowCompleted(execution_id=x, data={"n": -(1 << 63), "m": (1 << 64) - 1}, ts=1),
        ev.WorkflowCompleted(execution_id=x, data={"n": -(1 << 63) - 1}, ts=1),
        ev.WorkflowCompleted(execution_id=x, data={"s": "y" * (64 * 1024 - 8)}, ts=1),
        ev.WorkflowCompleted(execution_id=x, data={"s": "y" * (64 * 1024)}, ts=1),
        ev.WorkflowFailed(execution_id=x, error="e" * 4096, ts=1),
        ev.WorkflowFailed(execution_id=x, error="e" * 4097, ts=1),
        ev.WorkflowCancelled(execution_id=x, reason="r" * 300_000, ts=1),
        ev.WorkflowCancelled(execution_id=x, reason="why", event_id="", ts=1),
        ev.WorkflowProgress(execution_id=x, completed_steps="1", ts=1),  # type: ignore[arg-type]
        ev.WorkflowProgress(execution_id=x, completed_steps=True, ts=1),  # type: ignore[arg-type]
        ev.WorkflowCompleted(execution_id=x, data=[1], ts=1),  # type: ignore[arg-type]
    ]


def _consumer_accepts(event: ev.WorkflowEvent) -> bool:
    try:
        ev.decode_workflow(ev.encode(event))
    except BadEventError:
        return False
    return True


@pytest.mark.parametrize("event", _bad_or_edge_events(), ids=lambda e: repr(e)[:60])
def test_the_library_and_the_consumer_give_the_same_verdict(event: ev.WorkflowEvent) -> None:
    """Alone or in the middle of a batch of ordinary events (the batch pass), an event is
    refused exactly when the consumer's decoder would refuse it."""
    accepted = _consumer_accepts(event)
    ordinary = list(plan(1500, 100, seed=2))
    for batch in ([event], [*ordinary[:700], event, *ordinary[700:]]):
        if accepted:
            assert encode_checked(batch, "workflow") == [ev.encode(e) for e in batch]
        else:
            with pytest.raises(BadEventError, match="not published"):
                encode_checked(batch, "workflow")


def test_ordinary_batches_are_cleared_by_the_batch_pass() -> None:
    """The load generator's events never need the per-event look (the cost it would add is
    what the batch pass is for), and their payloads are what `encode` makes of each."""
    events = list(plan(5000, 500, seed=4))
    blob = msgspec.json.encode(events)
    assert plainly_valid(blob, list(map(bytes, _split.decode(blob))))
    assert encode_checked(events, "workflow") == [ev.encode(e) for e in events]
