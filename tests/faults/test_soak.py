"""The soak (`pytest tests/faults --soak --soak-seconds 600`): steady load for the given time
while random faults hit consumers and redis-server; at the end 0 lost, 0 doubled, and SQLite
and the mirror equal the reference fold. Prints the counts."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from producers.client import Producer
from tests.faults.reference import Ledger, check, feed
from tests.faults.reference import workload as make_workload
from wks.redis import client

pytestmark = [pytest.mark.slow, pytest.mark.soak]

FAULTS = ("kill", "kill", "pause", "crash", "redis")


@pytest.mark.parametrize("seed", [7])
async def test_soak_mixed_faults(make_rig, soak_seconds, seed, capsys):
    """Random consumer kills, pauses, post-commit crashes and redis-server kills under load."""
    rng = random.Random(seed)
    chaos_rng = random.Random(f"{seed}-chaos")
    rig = await make_rig(appendfsync="always")
    for _ in range(3):
        rig.spawn()
    producer = Producer(client(rig.server.url), rig.keys, owns_client=True, durable=True)
    ledger = Ledger()
    faults: Counter[str] = Counter()
    deadline = time.monotonic() + soak_seconds

    async def load() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await feed(ledger, producer, make_workload(rng, f"s{seed}-{n}", 50), rng,
                       pause=(0.005, 0.03))

    async def chaos() -> None:
        while time.monotonic() < deadline - 5:
            await asyncio.sleep(chaos_rng.uniform(0.5, 3.0))  # the next fault, at random
            fault = chaos_rng.choice(FAULTS)
            awake = [w for w in rig.workers if w.alive and not w.stopped]
            victim = chaos_rng.choice(awake) if awake else None
            if fault == "kill" and victim is not None:
                victim.kill()
                rig.spawn()
            elif fault == "pause" and victim is not None:
                victim.pause()
                await asyncio.sleep(rig.claim_idle * chaos_rng.uniform(1.5, 3.0))
                victim.resume()
            elif fault == "crash":  # an extra consumer that dies after commit, before XACK
                rig.spawn(WKS_DEBUG_CRASH_AFTER_COMMIT=str(chaos_rng.randint(1, 5)))
            elif fault == "redis":
                rig.kill_redis()
                await asyncio.sleep(chaos_rng.uniform(0.2, 2.0))
                await rig.restart_redis()
            else:
                continue
            faults[fault] += 1

    async with asyncio.TaskGroup() as tg:
        tg.create_task(load())
        tg.create_task(chaos())
    await producer.flush(60)
    ledger.flushed()
    await producer.aclose()
    if not any(w.alive for w in rig.workers):
        rig.spawn()
    await rig.settle(180)
    outcome = await check(ledger, rig.db_path, rig.redis, rig.keys, seed)
    crashed = sum(1 for w in rig.workers if w.proc.returncode == 137)
    with capsys.disabled():
        print(f"\nsoak {soak_seconds:.0f}s: faults={sum(faults.values())} {dict(faults)} "
              f"(post-commit crashes that fired: {crashed}) {outcome.summary()}")
    outcome.assert_exact()
