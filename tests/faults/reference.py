"""The model side of the fault suite: seeded workloads, the ledger of what the producer saw
acknowledged, and the check of SQLite and the Redis mirror against a reference fold.

The reference is `wks.state.fold_events` over the events themselves, never anything read
back from the system under test, so a lost, doubled or misapplied event shows as a
difference.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from producers.client import Producer
from wks.events import (
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowEvent,
    WorkflowFailed,
    WorkflowProgress,
    WorkflowStarted,
)
from wks.keys import Keys
from wks.state import TERMINAL, decode_fold, fold_events, mirror_fields, to_state

BASE_TS = 1_700_000_000_000


def workload(
    rng: random.Random, tag: str, executions: int, *, max_steps: int = 6, resend: float = 0.02
) -> list[WorkflowEvent]:
    """Events of `executions` executions, interleaved at random, with a few producer resends.

    Each execution runs started -> progress... -> completed/failed/cancelled (or stays
    running); stamps collide now and then so the eventId tiebreak is exercised too.
    """
    queues: list[list[WorkflowEvent]] = []
    counter = 0

    def eid() -> str:
        nonlocal counter
        counter += 1
        return f"{tag}-{counter:07d}"

    for n in range(executions):
        ex = f"{tag}-x{n}"
        ts = BASE_TS + rng.randrange(10_000_000)
        total = rng.randint(1, max_steps)
        owner = rng.choice([None, "alice", "bob"])
        q: list[WorkflowEvent] = [WorkflowStarted(
            execution_id=ex, workflow_id=f"wf-{n % 7}", total_steps=total, owner=owner,
            data={"run": n, "seed": tag}, ts=ts, event_id=eid())]
        for step in range(1, rng.randint(0, total) + 1):
            ts += rng.randint(0, 3)
            q.append(WorkflowProgress(
                execution_id=ex, completed_steps=step, current_step=f"step-{step}",
                data={"last": step, "w": rng.randrange(100)}, ts=ts, event_id=eid()))
        ts += rng.randint(0, 3)
        end = rng.random()
        if end < 0.5:
            q.append(WorkflowCompleted(execution_id=ex, data={"ok": True}, ts=ts,
                                       event_id=eid()))
        elif end < 0.65:
            q.append(WorkflowFailed(execution_id=ex, error=f"boom {n}", ts=ts, event_id=eid()))
        elif end < 0.75:
            q.append(WorkflowCancelled(execution_id=ex, reason="stop", ts=ts, event_id=eid()))
        queues.append(q)
    out: list[WorkflowEvent] = []
    live = [q[::-1] for q in queues]
    while live:
        i = rng.randrange(len(live))
        out.append(live[i].pop())
        if not live[i]:
            live[i] = live[-1]
            live.pop()
    for _ in range(int(len(out) * resend)):  # the same eventId sent again later
        j = rng.randrange(len(out))
        out.insert(rng.randrange(j, len(out) + 1), out[j])
    return out


def key_of(event: WorkflowEvent) -> str:
    assert event.event_id is not None
    return event.event_id


@dataclass
class Ledger:
    """Every event handed to the producer, and which of them it saw acknowledged."""

    published: dict[str, WorkflowEvent] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)  # keys in publish order
    buffered: list[str] = field(default_factory=list)

    async def publish(self, producer: Producer, events: list[WorkflowEvent]) -> bool:
        """Publish one batch (<= 1000, so it is appended whole or buffered whole)."""
        keys = [key_of(e) for e in events]
        for k, e in zip(keys, events, strict=True):
            self.published[k] = e
        self.order.extend(keys)
        ids = await producer.publish_many(events)
        if ids is None:
            self.buffered.extend(keys)
            return False
        assert len(ids) == len(events)
        self.acked.update(keys)
        return True

    def flushed(self) -> None:
        """The producer's buffer drained: every buffered event was appended."""
        self.acked.update(self.buffered)
        self.buffered.clear()


async def feed(
    ledger: Ledger, producer: Producer, events: list[WorkflowEvent], rng: random.Random,
    *, batch: tuple[int, int] = (1, 20), pause: tuple[float, float] = (0.0, 0.01),
) -> None:
    """Publish `events` in random small batches, paced so faults land mid-stream."""
    i = 0
    while i < len(events):
        n = rng.randint(*batch)
        await ledger.publish(producer, events[i:i + n])
        i += n
        await asyncio.sleep(rng.uniform(*pause))  # the load's shape, not a wait for anything


@dataclass
class Outcome:
    seed: int
    published: int
    acked: int
    expected: int
    folded: int
    lost: set[str]
    duplicated: int
    unknown: set[str]
    state_diffs: list[str]
    mirror_diffs: list[str]

    def summary(self) -> str:
        return (f"seed={self.seed} published={self.published} acked={self.acked} "
                f"expected={self.expected} folded={self.folded} lost={len(self.lost)} "
                f"duplicated={self.duplicated} unknown={len(self.unknown)} "
                f"state_diffs={len(self.state_diffs)} mirror_diffs={len(self.mirror_diffs)}")

    def assert_exact(self) -> None:
        """0 lost, 0 doubled, state and mirror equal to the reference fold."""
        detail = "; ".join((sorted(self.lost)[:5] and [f"lost e.g. {sorted(self.lost)[:5]}"])
                           + self.state_diffs[:3] + self.mirror_diffs[:3])
        bad = bool(self.lost or self.duplicated or self.unknown or self.state_diffs
                   or self.mirror_diffs)
        assert not bad, f"{self.summary()} {detail} (re-run with this seed)"


def db_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def logged_keys(path: Path) -> dict[str, int]:
    """event_key -> how many times it is in event_log."""
    with db_connect(path) as conn:
        rows = conn.execute("SELECT event_key, COUNT(*) FROM event_log GROUP BY event_key")
        return {k: n for k, n in rows}


def stored_states(path: Path) -> dict[str, dict[str, object]]:
    """Every execution as stored: the state derived from its fold blob, plus the columns."""
    out: dict[str, dict[str, object]] = {}
    with db_connect(path) as conn:
        for eid, blob, status, progress, steps in conn.execute(
            "SELECT execution_id, fold, status, progress, completed_steps FROM executions"
        ):
            state = to_state(decode_fold(blob))
            out[eid] = {"state": state, "columns": (status, progress, steps)}
    return out


async def check(
    ledger: Ledger,
    db_path: Path,
    redis: aioredis.Redis | None,
    keys: Keys,
    seed: int,
    *,
    expected: Iterable[str] | None = None,
    mirror_of: Iterable[str] | None = None,
) -> Outcome:
    """Compare SQLite (and the mirror) with the reference fold of the events folded.

    `expected` (default: every acknowledged event) must each be in event_log exactly once;
    the stored state must equal the reference fold of exactly the logged events (which may
    include an unacknowledged event whose XADD landed before the connection broke).
    `mirror_of` limits the mirror check (None: every execution; skip with `redis=None`).
    """
    want = set(ledger.acked if expected is None else expected)
    logged = logged_keys(db_path)
    unknown = set(logged) - set(ledger.published)
    lost = want - set(logged)
    duplicated = sum(n - 1 for n in logged.values())
    folds = fold_events([(ledger.published[k], k) for k in logged if k in ledger.published])
    reference = {eid: to_state(f) for eid, f in folds.items()}
    stored = stored_states(db_path)
    diffs: list[str] = []
    for eid in sorted(set(reference) | set(stored)):
        ref, got = reference.get(eid), stored.get(eid)
        if ref is None or got is None:
            diffs.append(f"{eid}: reference {ref is not None}, stored {got is not None}")
            continue
        cols = (ref.status, ref.progress, ref.completed_steps)
        if got["state"] != ref or got["columns"] != cols:
            diffs.append(f"{eid}: stored {got['state']} != reference {ref}")
    mirror_diffs: list[str] = []
    if redis is not None:
        names = set(reference) if mirror_of is None else set(mirror_of)
        for eid in sorted(names):
            raw = await redis.hgetall(keys.workflow(eid))
            got_m = {k.decode(): v.decode() for k, v in raw.items()}
            if got_m != mirror_fields(reference[eid]):
                mirror_diffs.append(f"mirror {eid}: {got_m} != {mirror_fields(reference[eid])}")
        active = {m.decode() for m in await redis.smembers(keys.active)}
        for eid in names:
            if (reference[eid].status not in TERMINAL) != (eid in active):
                mirror_diffs.append(f"active set wrong for {eid} ({reference[eid].status})")
    return Outcome(seed, len(ledger.published), len(ledger.acked), len(want), len(logged), lost,
                   duplicated, unknown, diffs, mirror_diffs)
