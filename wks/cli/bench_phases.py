"""The phases of `wks bench`, each against a private key prefix and fresh SQLite files.

(1) producer: the producer library publishing N events (publish_many of 10,000, which it
    sends as 1,000-event script calls), interleaved call by call with redis-py pipelines of
    1,000 XADDs of the same payloads (the ruler), so both see the same noise.
(2) fold: the real state consumer (GroupReader + StateHandler, burst mode) into a fresh store,
    then the naive consumer of the issue on the same entries (the ruler).
(3) replay: `wks.replay.fold_range` of the same stream into a fresh store.
(4) latency: events published at a fixed rate while the state consumer runs; the latency of
    an event is from just before its publish call to the moment `StateHandler.apply` returns
    for its batch, i.e. after the SQLite COMMIT (both clocks in this process). At each rate
    the naive consumer is measured the same way right after, as the ruler. With a history
    (`history_phase`), both files hold it first, and the events go to its executions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from consumers.reader import GroupReader
from consumers.state import StateHandler
from producers.client import Producer
from producers.loadgen import plan
from producers.loadgen import publish as publish_load
from wks.bench import eps, latency_summary
from wks.config import Settings
from wks.events import StreamEntry, WorkflowEvent, encode
from wks.keys import EVENT_FIELD, GROUP_STATE
from wks.progress import Progress
from wks.replay import fold_range
from wks.store import FOLD_BATCH, Store

_CHUNK = 10_000  # events per publish_many call (the library splits them in 1,000s)
_PIPELINE = 1000  # XADDs per pipeline for the ruler, as in the issue


@dataclass
class Bench:
    """What every phase shares: settings under the private prefix, a client, a work dir."""

    settings: Settings
    redis: aioredis.Redis
    workdir: Path
    run: str  # execution id prefix of this bench run
    history: list[str] = field(default_factory=list)  # executions of `history_phase`

    @property
    def keys(self) -> Any:
        return self.settings.keys


class Observed:
    """A Handler that passes through to another and reports each committed batch."""

    def __init__(self, inner: Any, on_applied: Callable[[Sequence[StreamEntry], float], None]):
        self.inner = inner
        self.on_applied = on_applied

    def decode(self, raw: bytes) -> Any:
        return self.inner.decode(raw)

    def decode_many(self, raws: list[bytes]) -> list[Any] | None:
        return self.inner.decode_many(raws)  # type: ignore[no-any-return]

    async def prepare(self, items: Sequence[StreamEntry]) -> Any:
        return await self.inner.prepare(items)

    async def apply(self, items: Sequence[StreamEntry], prepared: Any = None) -> None:
        await self.inner.apply(items, prepared)
        self.on_applied(items, time.perf_counter())


def state_reader(
    b: Bench, store: Store, group: str, on_applied: Any, *, burst: bool
) -> GroupReader:
    s = b.settings
    store.commit_small_on_loop = True  # as `wks worker` runs it (wks.cli.services)
    handler = Observed(StateHandler(store, b.redis, b.keys, s.state_ttl), on_applied)
    return GroupReader(
        b.redis, b.keys, name="workflow", stream=b.keys.workflow_stream, group=group,
        handler=handler, claim_idle=s.claim_idle, max_deliveries=s.max_deliveries,
        batch_size=FOLD_BATCH, burst=burst,
    )


class CpuMeter:
    """CPU spent over a phase by this process (every thread) and by the Redis server, read
    from `INFO cpu` (every client's work, so a shared server adds its other traffic; None
    where the server does not say): where a phase's time goes, per event, and how many
    cores it kept busy."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._start: tuple[float, float | None, float] = (0.0, None, 0.0)

    async def _server(self) -> float | None:
        try:
            info = await self.redis.info("cpu")
            return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        except (KeyError, ValueError, ResponseError):
            return None

    async def start(self) -> None:
        self._start = (time.process_time(), await self._server(), time.perf_counter())

    async def figures(self, events: int, until: float | None = None) -> dict[str, Any]:
        """Per event and in cores, from `start` to now (`until`: the wall clock's end, a
        perf_counter time, when the phase's work ended before the call)."""
        proc = time.process_time() - self._start[0]
        server_now, server_then = await self._server(), self._start[1]
        server = None if server_now is None or server_then is None else server_now - server_then
        wall = (time.perf_counter() if until is None else until) - self._start[2]
        per = 1e6 / max(1, events)

        def cores(cpu: float | None) -> float | None:
            return None if cpu is None else round(cpu / wall, 2) if wall > 0 else 0.0

        return {
            "process_us_per_event": round(proc * per, 1),
            "redis_us_per_event": None if server is None else round(server * per, 1),
            "process_cores": cores(proc),
            "redis_cores": cores(server),
        }


# -- (1) the producer ----------------------------------------------------------------------------


async def producer_phase(b: Bench, n: int, executions: int) -> dict[str, Any]:
    """Publish N events with the library and, chunk by chunk, the same payloads pipelined."""
    producer = Producer(b.redis, b.keys, buffer_size=0)
    baseline = b.keys.bench_stream("xadd")
    lib_s = base_s = 0.0
    count = 0
    progress = Progress(n, "producer")
    chunk: list[WorkflowEvent] = []
    events = plan(n, executions, seed=1, run=b.run)
    for event in events:
        chunk.append(event)
        if len(chunk) < _CHUNK:
            continue
        lib, base = await _publish_both(b.redis, producer, baseline, chunk)
        lib_s, base_s, count = lib_s + lib, base_s + base, count + len(chunk)
        progress.update(len(chunk))
        chunk = []
    if chunk:
        lib, base = await _publish_both(b.redis, producer, baseline, chunk)
        lib_s, base_s, count = lib_s + lib, base_s + base, count + len(chunk)
        progress.update(len(chunk))
    progress.close()
    await b.redis.delete(baseline)
    return {
        "published": count,
        "producer_eps": eps(count, lib_s),
        "publish_mode": producer.mode,
        "xadd_pipeline_eps": eps(count, base_s),
    }


async def _publish_both(
    redis: aioredis.Redis, producer: Producer, baseline: str, chunk: list[WorkflowEvent]
) -> tuple[float, float]:
    t0 = time.perf_counter()
    ids = await producer.publish_many(chunk)
    t1 = time.perf_counter()
    if ids is None or len(ids) != len(chunk):
        raise RuntimeError("the producer buffered a bench batch: is Redis reachable?")
    payloads = [encode(e) for e in chunk]  # the ruler gets its payloads for free
    t2 = time.perf_counter()
    for start in range(0, len(payloads), _PIPELINE):
        async with redis.pipeline(transaction=False) as pipe:
            for p in payloads[start:start + _PIPELINE]:
                pipe.xadd(baseline, {EVENT_FIELD: p})
            await pipe.execute()
    return t1 - t0, time.perf_counter() - t2


# -- (2) the fold ----------------------------------------------------------------------------


async def fold_phase(b: Bench, n: int) -> dict[str, Any]:
    """The real state consumer folds the stream into a fresh store, one process, burst mode."""
    progress = Progress(n, "fold")
    last = [0.0]

    def applied(items: Sequence[StreamEntry], at: float) -> None:
        last[0] = at
        progress.update(len(items))

    store = await Store.open(b.workdir / "state.db")
    try:
        reader = state_reader(b, store, GROUP_STATE, applied, burst=True)
        cpu = CpuMeter(b.redis)
        await cpu.start()
        started = time.perf_counter()
        await reader.run(asyncio.Event())
        fold_cpu = await cpu.figures(reader.status.applied, until=last[0])
        progress.close()
        folded = int(await store.scalar("SELECT COUNT(*) FROM event_log"))
        executions = int(await store.scalar("SELECT COUNT(*) FROM executions"))
    finally:
        await store.close()
    return {
        "fold_eps": eps(reader.status.applied, last[0] - started),
        "folded": folded,
        "folded_executions": executions,
        "fold_batches": reader.status.batches,
        "dead": reader.status.dead,
        "fold_cpu": fold_cpu,
    }


_decode_any = msgspec.json.Decoder()


def _naive_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS log (entry_id TEXT PRIMARY KEY,"
                 " execution_id TEXT, type TEXT, ts INTEGER, payload TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS state (execution_id TEXT PRIMARY KEY,"
                 " status TEXT, completed_steps INTEGER, current_step TEXT, updated_at INTEGER,"
                 " data TEXT)")
    return conn


async def _naive_loop(
    b: Bench, group: str, conn: sqlite3.Connection, stop: asyncio.Event | None,
    on_commit: Callable[[list[Any], float], None],
) -> None:
    """The issue's naive consumer, all sequential: XREADGROUP COUNT 1000, msgspec decode,
    dict fold, executemany into a log and a state table (last writer wins), COMMIT, XACK.
    Without `stop` it returns once nothing is left (burst)."""
    stream = b.keys.workflow_stream
    while stop is None or not stop.is_set():
        reply = await b.redis.xreadgroup(group, "naive", {stream: ">"}, count=1000,
                                         block=50 if stop is None else 100)
        if not reply:
            if stop is None:
                return
            continue
        messages = reply[0][1]
        _naive_commit(conn, [(mid, fields[EVENT_FIELD]) for mid, fields in messages])
        on_commit([m for m, _ in messages], time.perf_counter())
        await b.redis.xack(stream, group, *[m for m, _ in messages])


def _naive_commit(conn: sqlite3.Connection, entries: list[tuple[Any, bytes]]) -> None:
    """The naive consumer's batch: decode, dict fold, executemany, COMMIT."""
    fold: dict[str, dict[str, Any]] = {}
    logs = []
    for mid, raw in entries:
        ev = _decode_any.decode(raw)
        xid = ev["executionId"]
        s = fold.setdefault(xid, {"status": "running", "completed": 0, "step": None,
                                  "ts": 0, "data": {}})
        if ev["ts"] >= s["ts"]:
            s["ts"] = ev["ts"]
            s["status"] = ev["type"].split(".", 1)[1].replace("progress", "running")
        s["completed"] = max(s["completed"], ev.get("completedSteps", 0))
        s["step"] = ev.get("currentStep") or s["step"]
        s["data"].update(ev.get("data") or {})
        logs.append((mid, xid, ev["type"], ev["ts"], raw))
    conn.execute("BEGIN")
    conn.executemany("INSERT OR IGNORE INTO log VALUES (?, ?, ?, ?, ?)", logs)
    conn.executemany(
        "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?)",
        [(x, s["status"], s["completed"], s["step"], s["ts"],
          msgspec.json.encode(s["data"])) for x, s in fold.items()],
    )
    conn.execute("COMMIT")


async def naive_phase(b: Bench, n: int) -> dict[str, Any]:
    """The naive consumer folds the same entries (its own group) into its own file."""
    stream, group = b.keys.workflow_stream, "naive"
    await b.redis.xgroup_create(stream, group, id="0")
    conn = _naive_db(b.workdir / "naive.db")
    progress = Progress(n, "naive fold")
    done = [0, 0.0]

    def committed(ids: list[Any], at: float) -> None:
        done[0] += len(ids)
        done[1] = at
        progress.update(len(ids))

    cpu = CpuMeter(b.redis)
    await cpu.start()
    started = time.perf_counter()
    try:
        await _naive_loop(b, group, conn, None, committed)
        naive_cpu = await cpu.figures(int(done[0]), until=done[1])
    finally:
        progress.close()
        conn.close()
        await b.redis.xgroup_destroy(stream, group)
    return {"naive_fold_eps": eps(int(done[0]), done[1] - started), "naive_folded": done[0],
            "naive_fold_cpu": naive_cpu}


def commit_floor(path: Path, commits: int = 200) -> dict[str, Any]:
    """Time of a one-row COMMIT with WAL + synchronous=FULL in the scratch directory: the
    disk's fsync, which no consumer can go below at low rates."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (v INTEGER)")
        times: list[float] = []
        for i in range(commits):
            t = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - t)
    finally:
        conn.close()
    out = latency_summary(times, 0)
    del out["rate"]
    return out


# -- (3) replay --------------------------------------------------------------------------------


async def replay_phase(b: Bench, n: int) -> dict[str, Any]:
    """`fold_range` of the whole stream into a fresh store."""
    progress = Progress(n, "replay")
    seen = [0]

    def on_page(stats: Any) -> None:
        progress.update(stats.entries - seen[0])
        seen[0] = stats.entries

    store = await Store.open(b.workdir / "replay.db")
    try:
        started = time.perf_counter()
        stats = await fold_range(b.redis, b.keys.workflow_stream, store, on_page=on_page)
        seconds = time.perf_counter() - started
    finally:
        progress.close()
        await store.close()
    return {"replay_eps": eps(stats.applied, seconds), "replayed": stats.applied}


# -- (4) latency, against new executions or a history -------------------------------------------


async def history_phase(b: Bench, n: int) -> dict[str, Any]:
    """Fold `n` events over n/10 executions into the latency phase's file (the store alone,
    no stream) and into the naive ruler's, for the latency phases to send their events to.

    The latency phase's own events are for new executions, whose ids sort together: a batch's
    rows share a few pages. A deployment that has run a while gets events for executions
    spread over a large table and its indexes, where each one touched costs a page of its
    own in the COMMIT and in the checkpoints."""
    executions = max(1, n // 10)
    progress = Progress(n, "history")
    started = time.perf_counter()
    seen: dict[str, None] = {}
    store = await Store.open(b.workdir / "state.db")
    naive = _naive_db(b.workdir / "naive-latency.db")
    try:
        chunk: list[StreamEntry] = []
        for i, event in enumerate(plan(n, executions, seed=4, run=f"{b.run}-h")):
            seen[event.execution_id] = None
            chunk.append(StreamEntry(f"1-{i}", event, encode(event)))  # older than any read
            if len(chunk) == FOLD_BATCH or i == n - 1:
                await store.apply_batch(chunk)
                _naive_commit(naive, [(e.entry_id, e.raw) for e in chunk])
                progress.update(len(chunk))
                chunk = []
    finally:
        progress.close()
        naive.close()
        await store.close()
    b.history = list(seen)
    return {"history_events": n, "history_executions": len(seen),
            "history_seconds": round(time.perf_counter() - started, 1)}


def _onto(events: list[WorkflowEvent], history: list[str], seed: int) -> list[WorkflowEvent]:
    """The events, each planned execution's sent to one of `history`'s, chosen at random
    (distinct while there are enough). Event ids stay the plan's, which no history event
    has."""
    planned = list(dict.fromkeys(e.execution_id for e in events))
    rng = random.Random(seed)
    picks = rng.sample(history, min(len(planned), len(history)))
    onto = {eid: picks[i % len(picks)] for i, eid in enumerate(planned)}
    return [msgspec.structs.replace(e, execution_id=onto[e.execution_id]) for e in events]


async def latency_phase(
    b: Bench, rate: float, seconds: float, *, naive: bool = False
) -> dict[str, Any]:
    """Publish at `rate` for `seconds` while a consumer runs; publish -> committed.

    The consumer is the real state consumer (the fold's file, a group of its own created at
    the stream's end), or with `naive` the issue's naive loop (likewise, and its own file):
    the ruler for the same rate, run right after it.
    """
    sent: dict[str, float] = {}
    latencies: list[float] = []
    drained = asyncio.Event()
    total = max(1, int(rate * seconds))
    who = "naive" if naive else "latency"
    progress = Progress(total, f"{who} @ {rate:,.0f}/s")
    finished = [False]

    early: dict[str, float] = {}  # committed before the publish call had returned its ids

    def on_sent(events: list[WorkflowEvent], ids: list[str] | None, t: float) -> None:
        for entry_id in ids or ():
            at = early.pop(entry_id, None)
            if at is None:
                sent[entry_id] = t
            else:
                latencies.append(at - t)

    def committed(entry_ids: list[str], at: float) -> None:
        for entry_id in entry_ids:
            t = sent.pop(entry_id, None)
            if t is not None:
                latencies.append(at - t)
            else:
                early[entry_id] = at
        progress.update(len(entry_ids))
        if finished[0] and not sent:
            drained.set()

    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(progress.close)
        # a group of its own from the stream's end: no backlog from an earlier phase
        group = "naive-latency" if naive else "state-latency"
        await b.redis.xgroup_create(b.keys.workflow_stream, group, id="$", mkstream=True)
        stack.push_async_callback(b.redis.xgroup_destroy, b.keys.workflow_stream, group)
        if naive:
            conn = _naive_db(b.workdir / "naive-latency.db")
            stack.callback(conn.close)
            consumer = _naive_loop(
                b, group, conn, stop,
                lambda ids, at: committed([i.decode() for i in ids], at))
        else:
            store = await Store.open(b.workdir / "state.db")
            stack.push_async_callback(store.close)
            consumer = state_reader(
                b, store, group,
                lambda items, at: committed([i.entry_id for i in items], at), burst=False,
            ).run(stop)
        # made before the clock starts: generated as the phase went, each window of the
        # shuffled plan (20,000 events, ~80 ms) stalled the loop the consumer shares, and
        # the events in flight then waited for the bench's workload, not for wks
        events = list(plan(total, max(1, total // 10), seed=2, run=f"{b.run}-{who}{int(rate)}"))
        if b.history:  # the same executions for both consumers: the ruler's file holds them too
            events = _onto(events, b.history, seed=int(rate))
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(consumer)
            producer = Producer(b.redis, b.keys, buffer_size=0)
            cpu = CpuMeter(b.redis)
            await cpu.start()
            result = await publish_load(producer, events, rate=rate, on_sent=on_sent)
            finished[0] = True
            if not sent:
                drained.set()
            try:
                await asyncio.wait_for(drained.wait(), timeout=60)
                # publisher and consumer (one process), until the last event was applied
                used = await cpu.figures(total)
            finally:
                stop.set()
            await task
    return latency_summary(
        latencies, rate, achieved_rate=round(result.rate, 1), cpu=used,
        measured_at="after the consumer's SQLite COMMIT returned, same process as the publisher",
    )
