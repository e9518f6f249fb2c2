"""Poison flood (scenario 6): 10% bad entries mixed into good ones. Every bad one lands in the
dead stream with its reason, every good one is folded; fold latency is reported, not asserted."""

from __future__ import annotations

import json
import random

import pytest

from producers.client import Producer
from tests.faults.reference import Ledger, check, db_connect
from tests.faults.reference import workload as make_workload
from tests.helpers import wait_for
from wks.events import MAX_ENTRY_BYTES, WorkflowStarted
from wks.keys import EVENT_FIELD
from wks.redis import client

pytestmark = pytest.mark.slow


def bad_entry(rng: random.Random, n: int, oversized: bool) -> dict[bytes, bytes]:
    """One entry that must be dead-lettered: each kind of bad input of SPEC section 5."""
    if oversized:
        return {EVENT_FIELD: b'{"type":"workflow.started","executionId":"big","data":{"x":"'
                + b"x" * MAX_ENTRY_BYTES + b'"}}'}
    kind = rng.randrange(9)
    if kind == 0:
        return {EVENT_FIELD: b"{not json %d" % n}
    if kind == 8:  # no event field, and a field name and value that are not UTF-8
        return {b"other\xff": b"value \xfe %d" % n}
    if kind == 7:  # valid JSON syntax, but a string that is not UTF-8
        return {EVENT_FIELD: b'{"type":"workflow.completed","executionId":"bad-%d-\xff",'
                             b'"ts":1}' % n}
    if kind == 1:
        return {b"other": b"no event field"}
    event = [
        {"type": "workflow.exploded", "executionId": f"bad-{n}", "ts": 1},
        {"type": "workflow.started", "executionId": f"bad-{n}", "ts": 1},  # no workflowId
        {"type": "workflow.progress", "executionId": f"bad-{n}", "completedSteps": "three",
         "ts": 1},
        {"type": "workflow.started", "executionId": f"bad id {n}!", "workflowId": "w",
         "totalSteps": 1, "ts": 1},
        {"type": "workflow.progress", "executionId": f"bad-{n}", "completedSteps": -1, "ts": 1},
    ][kind - 2]
    return {EVENT_FIELD: json.dumps(event).encode()}


def p(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize(
    "good", [5_000, pytest.param(50_000, marks=pytest.mark.soak)]
)
async def test_poison_flood(make_rig, good, capsys):
    """10% bad entries among good ones: all bad dead-lettered with a reason, all good folded."""
    seed = 61
    rng = random.Random(seed)
    rig = await make_rig()
    rig.spawn()
    rig.spawn()
    producer = Producer(client(rig.server.url), rig.keys, owns_client=True)
    ledger = Ledger()
    warm = WorkflowStarted(execution_id="warm", workflow_id="w", total_steps=1, ts=1,
                           event_id="warm-up")
    await ledger.publish(producer, [warm])
    await rig.settle()  # consumers are up: latency below is folding, not process start-up

    events = make_workload(rng, f"g{seed}", good // 3, resend=0)[:good]
    assert len(events) == good
    bad_ids: set[str] = set()
    n_bad = 0
    for start in range(0, good, 100):
        await ledger.publish(producer, events[start:start + 100])
        async with rig.redis.pipeline(transaction=False) as pipe:
            for _ in range(10):  # 10 bad per 100 good
                pipe.xadd(rig.keys.workflow_stream, bad_entry(rng, n_bad, n_bad % 500 == 7))
                n_bad += 1
            bad_ids.update(i.decode() for i in await pipe.execute())
    await producer.aclose()
    await rig.settle(120)

    dead = await rig.redis.xrange(rig.keys.dead_stream)
    dead_ids = {f[b"entryId"].decode() for _, f in dead}
    assert len(dead) == n_bad, f"seed={seed}: {len(dead)} dead letters for {n_bad} bad entries"
    assert dead_ids == bad_ids, f"seed={seed}: dead letters are exactly the bad entries"
    assert all(f[b"reason"] and f[b"stream"] == rig.keys.workflow_stream.encode()
               for _, f in dead), f"seed={seed}: each dead letter names its reason and stream"
    outcome = await check(ledger, rig.db_path, rig.redis, rig.keys, seed)
    outcome.assert_exact()

    with db_connect(rig.db_path) as conn:
        lat = [r[0] for r in conn.execute(
            "SELECT applied_at - entry_ms FROM event_log WHERE event_key != 'warm-up'")]
    with capsys.disabled():
        print(f"\npoison flood: {good} good + {n_bad} bad entries, 2 consumers: fold latency "
              f"of good events p50={p(lat, 0.5)} ms p99={p(lat, 0.99)} ms max={max(lat)} ms")
    assert all(w.alive for w in rig.workers), "bad input never crashes a consumer"


async def test_bad_entry_taken_over_is_dead_lettered_once(make_rig):
    """A bad entry handled by two consumers (one paused past claimIdle) is dead-lettered once."""
    seed = 62
    rng = random.Random(seed)
    rig = await make_rig()
    a, b = rig.spawn(), rig.spawn()
    producer = Producer(client(rig.server.url), rig.keys, owns_client=True)
    warm = WorkflowStarted(execution_id="warm", workflow_id="w", total_steps=1, ts=1,
                           event_id="warm-up")
    await Ledger().publish(producer, [warm])
    await producer.aclose()
    bad_ids: set[str] = set()
    for n in range(30):  # until the paused one holds delivered bad entries
        await rig.settle()
        a.pause()
        for _ in range(5):
            bad_ids.add((await rig.redis.xadd(rig.keys.workflow_stream,
                                              bad_entry(rng, n, False))).decode())
        if await rig.pending_of(a) > 0:
            break
        a.resume()
    else:
        pytest.fail(f"seed={seed}: the paused consumer was never handed entries")
    await wait_for(lambda: b.logged("claimed"), 30, f"seed={seed}: taken over by XAUTOCLAIM")
    await rig.settle()  # the other consumer dead-lettered them
    a.resume()  # and now the paused one handles the same entries
    await wait_for(lambda: a.logged("dead letter"), 30, f"seed={seed}: the woken consumer")
    await rig.settle()
    dead = [f[b"entryId"].decode() for _, f in await rig.redis.xrange(rig.keys.dead_stream)]
    assert sorted(dead) == sorted(bad_ids), f"seed={seed}: each bad entry dead-lettered once"
