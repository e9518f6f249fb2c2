"""A load generator: N workflow events over M executions, shuffled, optionally duplicated,
published as fast as possible or at a fixed rate. Used by `wks bench` and the fault tests.

    events = plan(20_000, 500, duplicates=0.05, seed=7)
    result = await publish(producer, events, rate=1000, keep=True)
    result.published  # [(entry_id, event), ...] in publish order, duplicates included

Each execution gets a realistic life: `workflow.started`, progress events with a current step
(and `data` now and then), then `workflow.completed` (or, for some, failed or cancelled).
Memory stays bounded for any N: executions are generated a window at a time and shuffled
inside that window, so a million events never sit in memory at once (unless `keep=True`).
A duplicate is the same event (same `eventId`) published again under a new entry id, which is
what a producer's resend after an ambiguous failure looks like.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from producers.client import Producer
from wks.events import (
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowEvent,
    WorkflowFailed,
    WorkflowProgress,
    WorkflowStarted,
)

_OWNERS = ("alice", "bob", "carol", "dave")
_WINDOW = 20_000  # events generated and shuffled together (bounds memory)


def _lifecycle(
    run: str, index: int, count: int, ts0: int, rng: random.Random
) -> list[WorkflowEvent]:
    """`count` events of one execution: started, progress..., a terminal event."""
    xid = f"{run}-{index:07d}"
    ts = ts0 + index
    steps = max(1, count - 2)
    events: list[WorkflowEvent] = [WorkflowStarted(
        execution_id=xid, workflow_id=f"wf-{index % 50}", total_steps=steps,
        owner=_OWNERS[index % len(_OWNERS)], data={"batch": index % 97},
        ts=ts, event_id=f"{xid}-0",
    )]
    for i in range(1, count):
        ts += 1 + rng.randrange(20)
        eid = f"{xid}-{i}"
        if i < count - 1 or (count == 2 and rng.random() < 0.5):
            events.append(WorkflowProgress(
                execution_id=xid, completed_steps=min(i, steps), current_step=f"step-{i}",
                data={"rows": i * 100} if i % 4 == 0 else None, ts=ts, event_id=eid,
            ))
            continue
        roll = rng.random()
        if roll < 0.90:
            events.append(WorkflowCompleted(
                execution_id=xid, data={"result": "ok"}, ts=ts, event_id=eid))
        elif roll < 0.97:
            events.append(WorkflowFailed(
                execution_id=xid, error="step raised ValueError", ts=ts, event_id=eid))
        else:
            events.append(WorkflowCancelled(
                execution_id=xid, reason="operator", ts=ts, event_id=eid))
    return events


def plan(
    n: int,
    executions: int,
    *,
    duplicates: float = 0.0,
    shuffle: bool = True,
    seed: int | None = None,
    run: str | None = None,
    ts0: int | None = None,
) -> Iterator[WorkflowEvent]:
    """Yield `n` distinct events over `executions` executions (plus `duplicates` x n resends).

    Events are spread evenly (the first `n % executions` executions get one more). With
    `shuffle`, order is random inside windows of about 20,000 events, so an execution's
    events arrive out of order, as several producers would deliver them.
    """
    if n < 0 or executions <= 0:
        raise ValueError("need n >= 0 and executions >= 1")
    rng = random.Random(seed)
    run = run or f"x{uuid.uuid4().hex[:8]}"
    ts0 = int(time.time() * 1000) if ts0 is None else ts0
    executions = min(executions, n) or 1
    base, extra = divmod(n, executions)
    window: list[WorkflowEvent] = []
    for index in range(executions):
        count = base + (1 if index < extra else 0)
        if count:
            window.extend(_lifecycle(run, index, count, ts0, rng))
        if len(window) >= _WINDOW or index == executions - 1:
            yield from _mix(window, duplicates, shuffle, rng)
            window = []


def _mix(
    window: list[WorkflowEvent], duplicates: float, shuffle: bool, rng: random.Random
) -> list[WorkflowEvent]:
    if duplicates > 0 and window:
        k = round(len(window) * duplicates)
        window = window + [rng.choice(window) for _ in range(k)]
    if shuffle:
        rng.shuffle(window)
    return window


Sent = Callable[[list[WorkflowEvent], list[str] | None, float], Any]


@dataclass
class LoadResult:
    """What `publish` did: counts, time, and (with `keep`) every (entry id, event) sent."""

    count: int = 0
    buffered: int = 0
    seconds: float = 0.0
    batches: int = 0
    published: list[tuple[str, WorkflowEvent]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


async def publish(
    producer: Producer,
    events: Iterable[WorkflowEvent],
    *,
    rate: float | None = None,
    batch: int = 1000,
    stream: str | None = None,
    keep: bool = False,
    on_sent: Sent | None = None,
) -> LoadResult:
    """Publish `events` in batches, as fast as possible or at `rate` events/s.

    At a rate, every tick publishes the events that are due by then as one batch, so the
    schedule holds even when a tick runs late. `on_sent(events, entry_ids, t)` is called after
    each batch with `t` = `time.perf_counter()` taken just before the publish call
    (entry_ids is None when the producer buffered the batch because Redis was down).
    """
    result = LoadResult()
    # events per publish call at a rate: what 1 ms (asyncio's timer grain) holds, at least 1
    tick = max(1, int(rate / 1000)) if rate is not None else 1
    source = iter(events)
    started = time.perf_counter()
    done = False
    while not done:
        want = batch
        if rate is not None:
            sent = result.count + result.buffered
            due = int((time.perf_counter() - started) * rate) - sent
            if due < tick:
                # sleep until a tick's worth is due: waking for every event at 20,000/s
                # would spend a core on the schedule and a server call per event or two
                gap = (sent + tick) / rate - (time.perf_counter() - started)
                await asyncio.sleep(max(0.0, gap))
                continue
            want = min(batch, due)
        chunk = _take(source, want)
        if not chunk:
            break
        done = len(chunk) < want and rate is None
        t = time.perf_counter()
        ids = await producer.publish_many(chunk, stream)
        result.batches += 1
        if ids is None:
            result.buffered += len(chunk)
        else:
            result.count += len(chunk)
            if keep:
                result.published.extend(zip(ids, chunk, strict=True))
        if on_sent is not None:
            on_sent(chunk, ids, t)
    result.seconds = time.perf_counter() - started
    return result


def _take(source: Iterator[WorkflowEvent], n: int) -> list[WorkflowEvent]:
    out: list[WorkflowEvent] = []
    for event in source:
        out.append(event)
        if len(out) >= n:
            break
    return out


async def publish_concurrently(
    producers: list[Producer],
    events: Iterable[WorkflowEvent],
    *,
    batch: int = 100,
    keep: bool = True,
) -> LoadResult:
    """Deal `events` round-robin to several producers publishing at once (one task each)."""
    lanes: list[list[WorkflowEvent]] = [[] for _ in producers]
    for i, event in enumerate(events):
        lanes[i % len(producers)].append(event)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(publish(p, lane, batch=batch, keep=keep))
                 for p, lane in zip(producers, lanes, strict=True)]
    total = LoadResult(seconds=time.perf_counter() - started)
    for task in tasks:
        part = task.result()
        total.count += part.count
        total.buffered += part.buffered
        total.batches += part.batches
        total.published.extend(part.published)
    return total
