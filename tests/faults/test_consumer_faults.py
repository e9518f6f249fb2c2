"""Consumer processes killed, crashed between commit and XACK, or paused past claimIdle
(scenarios 1, 2 and 5): nothing lost, nothing applied twice, state equal to the reference."""

from __future__ import annotations

import asyncio
import random

import pytest

from producers.client import Producer
from tests.faults.harness import Rig, Worker
from tests.faults.reference import Ledger, check, db_connect, feed, logged_keys, stored_states
from tests.faults.reference import workload as make_workload
from tests.helpers import wait_for
from wks.keys import GROUP_STATE
from wks.redis import client

pytestmark = pytest.mark.slow

KILL_SEEDS = [1, 2, 3, 4, 5]
SOAK_KILL_SEEDS = [pytest.param(s, marks=pytest.mark.soak) for s in range(100, 160)]


def producer_for(rig: Rig) -> Producer:
    return Producer(client(rig.server.url), rig.keys, owns_client=True)


def applied_entries(rig: Rig) -> set[str]:
    with db_connect(rig.db_path) as conn:
        rows = conn.execute("SELECT entry_id FROM event_log UNION SELECT entry_id FROM event_alias")
        return {r[0] for r in rows}


@pytest.mark.parametrize("seed", KILL_SEEDS + SOAK_KILL_SEEDS)
async def test_sigkill_consumers_at_random_points(make_rig, seed):
    """Consumers SIGKILLed at random points under load lose nothing and apply nothing twice."""
    rng = random.Random(seed)
    chaos_rng = random.Random(f"{seed}-chaos")
    rig = await make_rig()
    rig.spawn()
    rig.spawn()
    producer = producer_for(rig)
    ledger = Ledger()
    events = make_workload(rng, f"k{seed}", rng.randint(100, 200))
    kills = chaos_rng.randint(2, 4)

    async def chaos() -> None:
        for _ in range(kills):
            await asyncio.sleep(chaos_rng.uniform(0.1, 0.8))  # a random point in time
            victim = chaos_rng.choice(rig.alive)
            victim.kill()
            rig.faults += 1
            rig.spawn()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(feed(ledger, producer, events, rng, pause=(0.005, 0.03)))
        tg.create_task(chaos())
    await producer.aclose()
    assert not ledger.buffered, f"seed={seed}: Redis never went away, nothing may be buffered"
    await rig.settle()
    assert await rig.pending() == 0, f"seed={seed}: entries left pending"
    outcome = await check(ledger, rig.db_path, rig.redis, rig.keys, seed)
    print(f"sigkill {outcome.summary()} kills={rig.faults}")
    outcome.assert_exact()
    assert rig.faults == kills


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_crash_between_commit_and_ack(make_rig, seed):
    """Entries committed but never acknowledged are redelivered, recognised, acknowledged."""
    rng = random.Random(seed)
    crash_at = rng.randint(1, 3)
    rig = await make_rig()
    producer = producer_for(rig)
    ledger = Ledger()
    events = make_workload(rng, f"c{seed}", 20 * crash_at)
    rounds = [events[i::crash_at] for i in range(crash_at)]
    first = rig.spawn(WKS_DEBUG_CRASH_AFTER_COMMIT=str(crash_at))
    for i, chunk in enumerate(rounds):
        # one script call: the worker reads the round as one batch and commits it once
        await ledger.publish(producer, chunk)
        if i < crash_at - 1:
            await rig.settle(30)
    await wait_for(lambda: not first.alive, 30, f"seed={seed}: the crash after commit")
    assert first.proc.returncode == 137, f"seed={seed}: {first.proc.returncode}"
    assert first.logged("debugCrashAfterCommit"), f"seed={seed}"

    rows = await rig.redis.xpending_range(rig.keys.workflow_stream, GROUP_STATE, "-", "+", 10_000)
    pending = {r["message_id"].decode() for r in rows}
    assert len(pending) == len(rounds[-1]), f"seed={seed}: the last batch is left pending"
    assert pending <= applied_entries(rig), f"seed={seed}: crashed after commit, before XACK"
    states, logged = stored_states(rig.db_path), logged_keys(rig.db_path)

    second = rig.spawn()
    await rig.settle(30)
    assert second.logged("claimed"), f"seed={seed}: the redelivery went through XAUTOCLAIM"
    assert stored_states(rig.db_path) == states, f"seed={seed}: redelivery changed state"
    assert logged_keys(rig.db_path) == logged, f"seed={seed}: redelivery logged events again"
    outcome = await check(ledger, rig.db_path, rig.redis, rig.keys, seed)
    outcome.assert_exact()
    await producer.aclose()


@pytest.mark.parametrize("seed", [21, 22])
async def test_sigstop_longer_than_claim_idle(make_rig, seed):
    """A consumer paused past claimIdle loses its entries to another and, awake, doubles nothing."""
    rng = random.Random(seed)
    chaos_rng = random.Random(f"{seed}-chaos")
    rig = await make_rig()
    a, b = rig.spawn(), rig.spawn()
    producer = producer_for(rig)
    ledger = Ledger()

    async def chaos() -> None:  # pauses at random points under load
        for _ in range(2):
            await asyncio.sleep(chaos_rng.uniform(0.1, 0.6))
            victim = chaos_rng.choice([a, b])
            victim.pause()
            rig.faults += 1
            await asyncio.sleep(rig.claim_idle * chaos_rng.uniform(1.5, 3.0))
            victim.resume()

    events = make_workload(rng, f"p{seed}", 80)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(feed(ledger, producer, events, rng, pause=(0.0, 0.02)))
        tg.create_task(chaos())
    await rig.settle()
    (await check(ledger, rig.db_path, rig.redis, rig.keys, seed)).assert_exact()

    # now for certain: `a` is paused holding delivered entries that it has not applied
    extra = make_workload(rng, f"q{seed}", 60)
    for _attempt in range(30):
        await rig.settle()
        a.pause()
        chunk, extra = extra[:5], extra[5:]
        await ledger.publish(producer, chunk)  # served to whichever reader blocked first
        if await rig.pending_of(a) > 0:
            break
        a.resume()
    else:
        pytest.fail(f"seed={seed}: the paused consumer was never handed entries")
    rig.faults += 1
    await wait_for(lambda: _none_pending(rig, a), 30,
                   f"seed={seed}: the paused consumer's entries taken over")
    await wait_for(lambda: b.logged("claimed"), 10, f"seed={seed}: taken over by XAUTOCLAIM")
    a.resume()  # it now applies and acknowledges its stale batch
    await ledger.publish(producer, extra)
    await rig.settle()
    assert a.alive, f"seed={seed}"
    assert b.alive, f"seed={seed}"
    await producer.aclose()
    outcome = await check(ledger, rig.db_path, rig.redis, rig.keys, seed)
    print(f"sigstop {outcome.summary()} pauses={rig.faults}")
    outcome.assert_exact()


async def _none_pending(rig: Rig, worker: Worker) -> bool:
    return await rig.pending_of(worker) == 0
