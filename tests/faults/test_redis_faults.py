"""redis-server killed, restarted empty, stopped or paused (scenarios 3, 4 and 8): consumers
and producers recover by themselves; what the producer saw acknowledged is folded once."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from typing import Any

import pytest

from producers.client import Producer
from tests.faults.harness import Rig, health
from tests.faults.reference import Ledger, check, feed, logged_keys, stored_states
from tests.faults.reference import workload as make_workload
from tests.helpers import wait_for
from wks.errors import BufferFull, RedisUnavailable
from wks.events import WorkflowCompleted, WorkflowStarted
from wks.redis import client, server_info

pytestmark = pytest.mark.slow

RECOVERY = 10.0  # SPEC: consumers and producers recover by themselves within this


def producer_for(rig: Rig, **kwargs: Any) -> Producer:
    return Producer(client(rig.server.url), rig.keys, owns_client=True, **kwargs)


def _folded(rig: Rig, key: str | None = None) -> bool:
    """Has `key` (or, with None, anything) been folded yet? False while the store is new."""
    try:
        logged = logged_keys(rig.db_path)
    except sqlite3.OperationalError:  # the first worker is still creating the schema
        return False
    return bool(logged) if key is None else key in logged


@pytest.mark.parametrize(
    ("fsync", "durable", "seed"),
    [("everysec", False, 31), ("always", True, 32),
     pytest.param("everysec", False, 131, marks=pytest.mark.soak),
     pytest.param("always", True, 132, marks=pytest.mark.soak)],
)
async def test_redis_sigkill_under_load(make_rig, fsync, durable, seed):
    """redis-server SIGKILLed under load: all recover alone; what the AOF kept is folded once.

    appendfsync everysec may lose the last second of acknowledged writes (counted, allowed);
    with appendfsync always and the durable producer nothing acknowledged may be lost.
    (WAITAOF needs Redis 7.2; on older servers `durable=True` relies on appendfsync always.)
    """
    rng = random.Random(seed)
    chaos_rng = random.Random(f"{seed}-chaos")
    rig = await make_rig(appendfsync=fsync)
    rig.spawn()
    rig.spawn()
    producer = producer_for(rig, durable=durable)
    ledger = Ledger()
    events = make_workload(rng, f"r{seed}", 250)
    marker = WorkflowStarted(execution_id=f"r{seed}-marker", workflow_id="marker",
                             total_steps=1, ts=1, event_id=f"r{seed}-marker")
    recovered: dict[str, float] = {}

    async def chaos() -> None:
        await wait_for(lambda: _folded(rig), 30, "consumers folding")
        await asyncio.sleep(chaos_rng.uniform(0.1, 0.6))  # a random point under load
        rig.kill_redis()
        await asyncio.sleep(chaos_rng.uniform(0.3, 1.5))  # how long it stays down
        restarted = await rig.restart_redis()
        await ledger.publish(producer, [marker])  # behind whatever the producer buffered
        await producer.flush(RECOVERY)
        recovered["producer"] = time.monotonic() - restarted
        await wait_for(lambda: _folded(rig, marker.event_id), RECOVERY - recovered["producer"],
                       f"seed={seed}: consumers folding again within {RECOVERY}s")
        recovered["consumers"] = time.monotonic() - restarted

    async with asyncio.TaskGroup() as tg:
        tg.create_task(feed(ledger, producer, events, rng, pause=(0.005, 0.03)))
        tg.create_task(chaos())
    await producer.flush(RECOVERY)
    ledger.flushed()
    await rig.settle()
    assert all(w.alive for w in rig.workers), f"seed={seed}: a consumer died with Redis"
    for i, alone in enumerate(rig.workers):  # each consumer, on its own, folds again
        others = await rig.pause_all_but(alone)
        try:
            probe = WorkflowStarted(execution_id=f"r{seed}-alone-{i}", workflow_id="probe",
                                    total_steps=1, ts=1, event_id=f"r{seed}-alone-{i}")
            await ledger.publish(producer, [probe])
            await wait_for(lambda key=probe.event_id: _folded(rig, key), RECOVERY,
                           f"seed={seed}: consumer {i} folding on its own")
        finally:
            for w in others:
                w.resume()
    await producer.aclose()
    await rig.settle()

    survivors = set(await rig.stream_keys())
    logged = set(logged_keys(rig.db_path))
    lost_in_aof = ledger.acked - survivors - logged
    outcome = await check(ledger, rig.db_path, rig.redis if fsync == "always" else None,
                          rig.keys, seed, expected=ledger.acked & (survivors | logged))
    print(f"redis-kill fsync={fsync} {outcome.summary()} lost_in_aof={len(lost_in_aof)} "
          f"recovered={recovered}")
    outcome.assert_exact()
    if fsync == "always":
        assert not lost_in_aof, f"seed={seed}: acknowledged events lost: {sorted(lost_in_aof)[:5]}"
    if durable:  # what backs the durable option on this server
        version = (await server_info(rig.redis)).version
        assert producer.durability == ("waitaof" if version >= (7, 2) else "appendfsync always")


async def test_redis_restarted_empty(make_rig):
    """Redis restarted with no data: the group is recreated, SQLite untouched, new events fold."""
    seed = 41
    rng = random.Random(seed)
    rig = await make_rig(appendonly=False)
    rig.spawn()
    rig.spawn()
    producer = producer_for(rig)
    ledger = Ledger()
    first = make_workload(rng, f"e{seed}", 60)
    await feed(ledger, producer, first, rng)
    await rig.settle()
    before = stored_states(rig.db_path)

    _api, base = await rig.spawn_api()
    for w in rig.workers:  # held still, so /health can be seen reporting the missing group
        w.pause()
    rig.kill_redis()
    down = await wait_for(lambda: _health_is(base, "degraded"), 30, "/health degraded")
    assert down["checks"]["redis"]["status"] == "unhealthy", down
    await rig.restart_redis()
    assert await rig.redis.dbsize() == 0, "the server came back empty"
    empty = await wait_for(lambda: _health_is(base, "healthy"), 30, "/health after restart")
    assert empty["checks"]["consumers"]["groups"]["state"] == {"exists": False}, empty
    for w in rig.workers:
        w.resume()
    await wait_for(lambda: _group_back(base), 30, "/health reporting the group recreated")
    running = [eid for eid, row in before.items()
               if getattr(row["state"], "status", None) == "running"]
    ends = [WorkflowCompleted(execution_id=eid, ts=2_000_000_000_000, event_id=f"e{seed}-end-{i}")
            for i, eid in enumerate(running[:10])]
    second = make_workload(rng, f"f{seed}", 30) + ends
    await feed(ledger, producer, second, rng)
    await producer.aclose()
    ledger.flushed()
    await rig.settle()

    assert any(w.logged("consumer group missing") for w in rig.workers), "NOGROUP detected"
    touched = {e.execution_id for e in second}
    after = stored_states(rig.db_path)
    for eid, row in before.items():
        if eid not in touched:
            assert after[eid] == row, f"seed={seed}: {eid} changed without new events"
    outcome = await check(ledger, rig.db_path, rig.redis, rig.keys, seed, mirror_of=touched)
    outcome.assert_exact()


async def _health_is(base: str, status: str) -> dict[str, Any] | None:
    body = await health(base)
    return body if body is not None and body["status"] == status else None


async def _group_back(base: str) -> bool:
    body = await health(base)
    return bool(body and body["checks"]["consumers"]["groups"]["state"].get("exists"))


OUTAGE = 5.0


@pytest.mark.parametrize("how", ["stop", "pause"])
async def test_producer_rides_out_an_outage(make_rig, how):
    """Redis unreachable for 5 s: what was published meanwhile arrives afterwards, in order."""
    seed = 51
    rng = random.Random(seed)
    rig = await make_rig(appendfsync="always")
    rig.spawn()
    producer = producer_for(rig)
    ledger = Ledger()
    events = make_workload(rng, f"o{seed}", 60)
    third = len(events) // 3
    await feed(ledger, producer, events[:third], rng)
    during = events[third:2 * third]
    chunks = [during[i:i + 5] for i in range(0, len(during), 5)]

    async def publish_during() -> None:
        for chunk in chunks:
            await ledger.publish(producer, chunk)
            await asyncio.sleep(OUTAGE / len(chunks) / 2)  # spread over the outage

    if how == "stop":
        await asyncio.to_thread(rig.server.stop)
    else:
        rig.server.pause()
    rig.faults += 1
    publisher = asyncio.create_task(publish_during())
    await asyncio.sleep(OUTAGE)  # the outage itself
    if how == "stop":
        assert ledger.buffered, "publishing while Redis is down buffers"
        await rig.restart_redis()
    else:
        rig.server.resume()
    await publisher
    await feed(ledger, producer, events[2 * third:], rng)
    await producer.flush(RECOVERY)
    ledger.flushed()
    await producer.aclose()

    assert await rig.stream_keys() == ledger.order, f"{how}: events out of order or missing"
    await rig.settle()
    (await check(ledger, rig.db_path, rig.redis, rig.keys, seed)).assert_exact()


async def test_full_buffer_raises(make_rig):
    """A full producer buffer raises BufferFull; what it accepted arrives, nothing else."""
    rig = await make_rig(appendfsync="always")
    producer = producer_for(rig, buffer_size=20)
    ledger = Ledger()
    events = make_workload(random.Random(61), "b61", 20, resend=0)[:21]
    await asyncio.to_thread(rig.server.stop)
    for event in events[:20]:  # exactly the buffer's capacity is accepted
        assert not await ledger.publish(producer, [event]), "buffered, not sent"
    assert producer.buffered == 20
    with pytest.raises(BufferFull):
        await producer.publish(events[20])
    with pytest.raises(BufferFull):
        await producer.publish_many(events[:1])
    await rig.restart_redis()
    await producer.flush(RECOVERY)
    await producer.aclose()
    assert await rig.stream_keys() == ledger.order, "accepted events arrive in order"


async def test_closing_with_events_buffered_raises(make_rig):
    """Closing the producer while Redis is still down names the unpublished events."""
    rig = await make_rig(appendfsync="always")
    producer = producer_for(rig)
    events = make_workload(random.Random(62), "c62", 3, resend=0)
    await asyncio.to_thread(rig.server.stop)
    assert await producer.publish_many(events) is None, "buffered while Redis is down"
    with pytest.raises(RedisUnavailable, match=f"{len(events)} events still buffered"):
        await producer.aclose(flush_timeout=0.5)


async def test_durable_producer_says_when_nothing_backs_it(make_rig):
    """durable=True on a server without WAITAOF nor appendfsync always reports `none`."""
    rig = await make_rig(appendfsync="everysec")
    producer = producer_for(rig, durable=True)
    event = make_workload(random.Random(63), "n63", 1)[0]
    assert await producer.publish(event) is not None
    version = (await server_info(rig.redis)).version
    assert producer.durability == ("waitaof" if version >= (7, 2) else "none")
    await producer.aclose()


async def test_buffer_survives_a_server_refusing_writes(make_rig):
    """Redis back but refusing writes (OOM) at first: the buffer waits, then flushes in order."""
    rig = await make_rig(appendfsync="always")
    producer = producer_for(rig)
    ledger = Ledger()
    events = make_workload(random.Random(64), "m64", 10, resend=0)
    await asyncio.to_thread(rig.server.stop)
    assert not await ledger.publish(producer, events), "buffered while Redis is down"
    await rig.restart_redis()
    await rig.redis.config_set("maxmemory", "1")  # every write now answers OOM
    # the flusher meets the refusal; the buffer must still be there
    await wait_for(lambda: _oom_answered(rig), 15, "the flusher meeting the refusal")
    assert producer.buffered == len(events)
    await rig.redis.config_set("maxmemory", "0")
    await producer.flush(RECOVERY)
    await producer.aclose()
    assert await rig.stream_keys() == ledger.order


async def _oom_answered(rig: Rig) -> bool:
    stats = await rig.redis.info("errorstats")
    return bool(stats.get("errorstat_OOM"))
