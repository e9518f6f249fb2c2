"""The whole pipeline: producers -> stream -> consumer group -> SQLite + Redis mirror."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from producers.client import Producer
from tests.consumers import assert_mirror_matches, state_reader, stored_states
from tests.helpers import wait_for
from tests.workload import as_dicts, distinct_events, reference, workload
from wks import events as ev
from wks import metrics
from wks.config import Settings
from wks.keys import GROUP_STATE
from wks.state import decode_fold, encode_fold, fold_events
from wks.store import Store
from wks.stream_stats import group_stats

pytestmark = pytest.mark.both_redis


async def publish_all(
    producer: Producer, events: list[ev.WorkflowEvent], rnd: random.Random, dup_rate: float
) -> list[tuple[ev.WorkflowEvent, str]]:
    """Publish in batches; re-send some events with an eventId (new entry id, same event)."""
    published: list[tuple[ev.WorkflowEvent, str]] = []
    for start in range(0, len(events), 250):
        chunk = events[start:start + 250]
        resend = [e for e in chunk if e.event_id is not None and rnd.random() < dup_rate * 2]
        batch = chunk + resend
        ids = await producer.publish_many(batch)
        assert ids is not None
        published.extend(zip(batch, ids, strict=True))
        await asyncio.sleep(0)  # let the consumers interleave with the producers
    return published


async def test_concurrent_producers_and_consumers_fold_exactly_once(
    settings: Settings, r: aioredis.Redis
) -> None:
    """2 producers, 2 consumers, 20,000 shuffled events with 5% resends = the reference fold."""
    rnd = random.Random(20_000)
    events = workload(20_000, 500, rnd)
    rnd.shuffle(events)
    half = len(events) // 2
    keys = settings.keys
    stop = asyncio.Event()
    async with await Store.open(settings.db_path) as s1, await Store.open(settings.db_path) as s2:
        readers = [state_reader(settings, r, s, burst=False, block_ms=100) for s in (s1, s2)]
        consumers = [asyncio.create_task(rd.run(stop)) for rd in readers]
        producers = [Producer(r, keys), Producer(r, keys)]
        results = await asyncio.gather(
            publish_all(producers[0], events[:half], random.Random(1), 0.05),
            publish_all(producers[1], events[half:], random.Random(2), 0.05),
        )
        published = results[0] + results[1]

        async def drained() -> bool:
            stats = await group_stats(r, keys.workflow_stream, GROUP_STATE)
            return stats is not None and stats["pending"] == 0 and stats["lag"] == 0

        await wait_for(drained, timeout=60, what="the group to drain")
        stop.set()
        await asyncio.gather(*consumers)

        assert len(published) > len(events)  # resends happened
        expected = reference(published)
        assert await stored_states(s1) == as_dicts(expected)
        await assert_mirror_matches(r, settings, expected)
        logged = await s1.fetchall("SELECT execution_id, event_key FROM event_log")
        assert len(logged) == len(set(logged)) == len(distinct_events(published))
        assert sum(rd.status.applied for rd in readers) >= len(published)
        assert all(rd.status.applied > 0 for rd in readers), "both consumers took work"
        info = await r.xpending(keys.workflow_stream, GROUP_STATE)
        assert info["pending"] == 0


async def test_redelivered_batch_changes_nothing(settings: Settings, r: aioredis.Redis) -> None:
    """Applying the same entries twice (a crash before XACK) leaves state and log unchanged."""
    keys = settings.keys
    events = workload(300, 20, random.Random(7))
    ids = await Producer(r, keys).publish_many(events)
    assert ids is not None
    async with await Store.open(settings.db_path) as store:
        await state_reader(settings, r, store).run(asyncio.Event())
        before = await stored_states(store)
        count = await store.scalar("SELECT COUNT(*) FROM event_log")
        # a second group replays the whole stream into the same store, like a redelivery
        again = state_reader(settings, r, store, group="replay-check")
        await again.run(asyncio.Event())
        assert await stored_states(store) == before
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == count
        assert again.status.applied == len(ids)


class TestBadInput:
    async def test_bad_entries_go_to_the_dead_stream_and_the_rest_folds(
        self, settings: Settings, r: aioredis.Redis
    ) -> None:
        """Not JSON, unknown type, broken bound, oversized, nested too deeply, no `event`
        field: dead, with reason."""
        keys = settings.keys
        stream = keys.workflow_stream
        good = ev.WorkflowStarted(execution_id="ok-1", workflow_id="w", total_steps=2, ts=5)
        bad = {
            "not json": b"{nope",
            "unknown type": b'{"type":"workflow.teleported","executionId":"x","ts":1}',
            "broken bound": b'{"type":"workflow.started","executionId":"x","workflowId":"w",'
                            b'"totalSteps":2000000,"ts":1}',
            "oversized": b'{"type":"workflow.completed","executionId":"x","ts":1,"pad":"'
                         + b"x" * (300 * 1024) + b'"}',
            # 10 KB, valid JSON, nested past the depth limit in an unknown key
            "too deep": b'{"type":"workflow.completed","executionId":"x","ts":1,"pad":'
                        + b"[" * 5000 + b"]" * 5000 + b"}",
        }
        bad_ids: dict[str, str] = {}
        await r.xadd(stream, {"event": ev.encode(good)})
        for name, payload in bad.items():
            bad_ids[name] = (await r.xadd(stream, {"event": payload})).decode()
        bad_ids["no field"] = (await r.xadd(stream, {"other": b"1"})).decode()
        twins = [ev.encode(ev.WorkflowCompleted(execution_id=f"twin-{i}", ts=7)) for i in (1, 2)]
        bad_ids["two events"] = (await r.execute_command(
            "XADD", stream, "*", "event", twins[0], "extra", "x", "event", twins[1])).decode()
        extra = ev.WorkflowCompleted(execution_id="extra-1", ts=8)  # an extra field is ignored
        await r.xadd(stream, {"event": ev.encode(extra), "trace": b"abc"})
        after = ev.WorkflowProgress(execution_id="ok-1", completed_steps=1, ts=6)
        await r.xadd(stream, {"event": ev.encode(after)})

        async with await Store.open(settings.db_path) as store:
            reader = state_reader(settings, r, store)
            await reader.run(asyncio.Event())
            state = await store.get_state("ok-1")
            assert await store.get_state("extra-1") is not None
            assert await store.get_state("twin-2") is None  # neither of the two is taken
        assert state is not None
        assert state.completed_steps == 1

        dead = await r.xrange(keys.dead_stream)
        by_entry = {f[b"entryId"].decode(): f for _, f in dead}
        assert set(by_entry) == set(bad_ids.values())
        for name, entry_id in bad_ids.items():
            fields = by_entry[entry_id]
            assert fields[b"stream"].decode() == stream
            assert fields[b"reason"], name
            if name in bad:
                assert fields[b"payload"] == bad[name]
        assert b"not JSON" in by_entry[bad_ids["not json"]][b"reason"]
        assert b"totalSteps" in by_entry[bad_ids["broken bound"]][b"reason"]
        assert b"byte limit" in by_entry[bad_ids["oversized"]][b"reason"]
        assert b"nested deeper than 128" in by_entry[bad_ids["too deep"]][b"reason"]
        twin_letter = by_entry[bad_ids["two events"]]
        assert twin_letter[b"reason"] == b"entry has 2 'event' fields (one entry carries one event)"
        assert msgspec.json.decode(twin_letter[b"payload"]) == {
            "event#1": twins[0].decode(), "extra": "x", "event#2": twins[1].decode()}
        assert (await r.xpending(stream, GROUP_STATE))["pending"] == 0

    async def test_entry_delivered_too_often_is_dead_lettered(
        self, make_settings: object, r: aioredis.Redis
    ) -> None:
        """An entry past maxDeliveries goes to the dead stream instead of being retried."""
        settings = make_settings(claim_idle=0.05, max_deliveries=5)  # type: ignore[operator]
        keys = settings.keys
        stream = keys.workflow_stream
        await r.xgroup_create(stream, GROUP_STATE, id="0", mkstream=True)
        event = ev.WorkflowStarted(execution_id="p-1", workflow_id="w", total_steps=1, ts=1)
        entry = (await r.xadd(stream, {"event": ev.encode(event)})).decode()
        await r.xreadgroup(GROUP_STATE, "ghost", {stream: ">"})
        # as if it had already been delivered to crashing consumers five times
        await r.xclaim(stream, GROUP_STATE, "ghost", 0, [entry], idle=60_000, retrycount=5)
        async with await Store.open(settings.db_path) as store:
            await state_reader(settings, r, store).run(asyncio.Event())
            assert await store.get_state("p-1") is None
        dead = await r.xrange(keys.dead_stream)
        assert len(dead) == 1
        fields = dead[0][1]
        assert fields[b"entryId"].decode() == entry
        assert fields[b"reason"].startswith(b"delivered 6 times")


async def test_stop_finishes_and_acknowledges_the_batch_in_hand(
    settings: Settings, r: aioredis.Redis
) -> None:
    """On stop, the batch being applied still commits and is acknowledged."""
    keys = settings.keys
    ids = await Producer(r, keys).publish_many(workload(100, 5, random.Random(3)))
    assert ids is not None
    gate = asyncio.Event()
    entered = asyncio.Event()
    stop = asyncio.Event()
    async with await Store.open(settings.db_path) as store:
        reader = state_reader(settings, r, store, burst=False)
        real_apply = reader.handler.apply

        async def gated_apply(items: object, prepared: Any = None) -> None:
            entered.set()
            await gate.wait()
            await real_apply(items, prepared)  # type: ignore[arg-type]

        reader.handler.apply = gated_apply  # type: ignore[method-assign]
        task = asyncio.create_task(reader.run(stop))
        await asyncio.wait_for(entered.wait(), 10)
        stop.set()
        gate.set()
        await asyncio.wait_for(task, 10)
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == len(ids)
    assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == 0


async def test_consumer_survives_a_redis_restart(
    settings: Settings, redis_factory: object
) -> None:
    """Redis restarted under a running consumer: it reconnects alone and finishes correctly."""
    server = redis_factory(appendfsync="always")  # type: ignore[operator]
    r = aioredis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=1)
    keys = settings.keys
    events = workload(400, 20, random.Random(11))
    first, second = events[:200], events[200:]
    stop = asyncio.Event()
    async with await Store.open(settings.db_path) as store:
        reader = state_reader(settings, r, store, burst=False, block_ms=100)
        task = asyncio.create_task(reader.run(stop))
        producer = Producer(r, keys)
        ids1 = await producer.publish_many(first)
        assert ids1 is not None
        await wait_for(lambda: store.entry_applied(ids1[-1]), 20, "first half applied")
        await asyncio.to_thread(server.restart)
        ids2 = await producer.publish_many(second)
        if ids2 is None:  # the client noticed the restart: buffered, flushed on reconnect
            await producer.flush(20)
        await wait_for(lambda: reader.status.applied >= len(events), 30, "second half applied")
        stop.set()
        await asyncio.wait_for(task, 10)
        assert reader.status.ok
        stored = await stored_states(store)
    await r.aclose()
    # a buffered half has no entry ids to return, so the reference is what the stream holds
    check = aioredis.Redis.from_url(server.url)
    entries = await check.xrange(keys.workflow_stream)
    await check.aclose()
    published = [(ev.decode_workflow(f[b"event"]), i.decode()) for i, f in entries]
    assert len(published) == len(events)
    assert stored == as_dicts(reference(published))


def test_state_encoding_is_stable() -> None:
    """The stored blob decodes to the same fold (guards migrations of the Fold struct)."""
    folds = fold_events([(e, f"{i}-0") for i, e in enumerate(workload(50, 3, random.Random(1)))])
    for fold in folds.values():
        assert decode_fold(encode_fold(fold)) == fold
        assert msgspec.msgpack.decode(encode_fold(fold))  # plain msgpack for other tools


async def _fold_with_poison(
    settings: Settings, r: aioredis.Redis, n: int, bad: set[str]
) -> tuple[list[str], list[int], int]:
    """Publish `n` starts of executions p-0, p-1, ... and fold them with an apply that raises
    for the `bad` ones: the entry ids, the size of every apply call, the rows stored."""
    events = [ev.WorkflowStarted(execution_id=f"p-{i}", workflow_id="w", total_steps=1, ts=i)
              for i in range(n)]
    ids = await Producer(r, settings.keys).publish_many(events)
    assert ids is not None
    calls: list[int] = []
    async with await Store.open(settings.db_path) as store:
        reader = state_reader(settings, r, store)
        real_apply = reader.handler.apply

        async def apply(items: list[ev.StreamEntry], prepared: Any = None) -> None:
            calls.append(len(items))
            failing = sorted({i.event.execution_id for i in items} & bad)
            if failing:
                raise ValueError(f"cannot fold {failing[0]}")
            await real_apply(items, prepared)

        reader.handler.apply = apply  # type: ignore[method-assign]
        await reader.run(asyncio.Event())
        rows = await store.scalar("SELECT COUNT(*) FROM executions")
    return ids, calls, rows


class TestApplyFailures:
    async def test_poison_entry_is_isolated_and_the_rest_folds(
        self, settings: Settings, r: aioredis.Redis
    ) -> None:
        """An entry whose apply raises (a bug) is dead-lettered alone; its batch still folds."""
        keys = settings.keys
        ids, _calls, rows = await _fold_with_poison(settings, r, 10, {"p-3"})
        assert rows == 9
        dead = await r.xrange(keys.dead_stream)
        assert [f[b"entryId"].decode() for _, f in dead] == [ids[3]]
        assert dead[0][1][b"reason"] == b"apply failed: ValueError: cannot fold p-3"
        assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == 0

    async def test_poison_entries_are_found_by_halving(
        self, settings: Settings, r: aioredis.Redis
    ) -> None:
        """Two bad entries in a batch of 1,000 cost a few dozen applies, not 1,000."""
        keys = settings.keys
        ids, calls, rows = await _fold_with_poison(settings, r, 1000, {"p-3", "p-517"})
        assert rows == 998
        assert calls[0] == 1000  # one read, one batch
        assert len(calls) <= 1 + 2 * 2 * 10  # two failing entries, log2(1000) < 10 levels each
        dead = await r.xrange(keys.dead_stream)
        assert sorted(f[b"entryId"].decode() for _, f in dead) == sorted([ids[3], ids[517]])
        assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == 0

    async def test_sqlite_refusing_writes_means_no_ack_until_it_recovers(
        self, settings: Settings, r: aioredis.Redis
    ) -> None:
        """While SQLite cannot commit nothing is acknowledged or dead-lettered; then it folds."""
        keys = settings.keys
        ids = await Producer(r, keys).publish_many(workload(50, 5, random.Random(5)))
        assert ids is not None
        stop = asyncio.Event()
        async with await Store.open(settings.db_path) as store:
            await store.conn.execute("PRAGMA query_only = 1")  # every write now fails
            reader = state_reader(settings, r, store, burst=False, block_ms=50)
            task = asyncio.create_task(reader.run(stop))
            await wait_for(lambda: not reader.status.apply_ok, 10, "the failure to be reported")
            assert "apply" in (reader.status.last_error or "")
            assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == len(ids)
            assert await r.xlen(keys.dead_stream) == 0
            await store.conn.execute("PRAGMA query_only = 0")
            await wait_for(lambda: reader.status.applied == len(ids), 20, "recovery")
            assert reader.status.ok
            stop.set()
            await asyncio.wait_for(task, 10)
            assert await store.scalar("SELECT COUNT(*) FROM event_log") == len(ids)
        assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == 0


async def test_failed_batch_claimed_by_another_consumer_is_not_retried(
    settings: Settings, r: aioredis.Redis
) -> None:
    """A consumer that cannot commit leaves its batch to the one that claimed it: it stops
    retrying (and taking the write lock) once the entries are no longer pending to it."""
    keys = settings.keys
    ids = await Producer(r, keys).publish_many(workload(40, 4, random.Random(9)))
    assert ids is not None
    stop = asyncio.Event()
    async with await Store.open(settings.db_path) as broken, \
            await Store.open(settings.db_path) as healthy:
        await broken.conn.execute("PRAGMA query_only = 1")  # this consumer's writes fail
        failing = state_reader(settings, r, broken, burst=False, block_ms=50, consumer="a")
        task = asyncio.create_task(failing.run(stop))
        await wait_for(lambda: not failing.status.apply_ok, 10, "the failure to be reported")
        assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == len(ids)
        # b finds a's entries idle and claims them (claimIdle 0.05 s)
        taker = state_reader(settings, r, healthy, consumer="b", claim_idle=0.05)
        await taker.run(asyncio.Event())  # burst: until nothing is pending
        assert taker.status.claimed == len(ids)
        await wait_for(lambda: failing.status.taken_over == len(ids), 15,
                       "a noticing its batch was taken over")
        assert failing.status.applied == 0
        stop.set()
        await asyncio.wait_for(task, 10)
        assert await healthy.scalar("SELECT COUNT(*) FROM event_log") == len(ids)
    assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == 0
    assert await r.xlen(keys.dead_stream) == 0


async def test_fold_metrics_count_every_applied_event(
    settings: Settings, r: aioredis.Redis
) -> None:
    """wks_event_age_seconds and wks_events_total see each applied event once, by type."""
    group = f"metrics-{random.randrange(10**9)}"  # a label of its own: no other test adds
    events = workload(1500, 40, random.Random(15))
    ids = await Producer(r, settings.keys).publish_many(events)
    assert ids is not None

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    types = Counter(ev.event_type(e) for e in events)
    before = {t: sample("wks_events_total", stream="workflow", type=t, outcome="applied")
              for t in types}
    async with await Store.open(settings.db_path) as store:
        reader = state_reader(settings, r, store, group=group, batch_size=400)
        await reader.run(asyncio.Event())
    assert sample("wks_event_age_seconds_count", group=group) == len(events)
    assert sample("wks_event_age_seconds_sum", group=group) > 0
    for t, n in types.items():
        got = sample("wks_events_total", stream="workflow", type=t, outcome="applied")
        assert got - before[t] == n, t
