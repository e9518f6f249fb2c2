"""Generating workflow events for tests and folding them by reference."""

from __future__ import annotations

import random
from typing import Any

from wks import events as ev
from wks.state import State, fold_events, state_dict, to_state


def workload(n_events: int, n_exec: int, rnd: random.Random, *, with_ids: float = 0.5,
             t0: int = 1_700_000_000_000) -> list[ev.WorkflowEvent]:
    """About `n_events` events over `n_exec` executions: a start, progress, maybe an end."""
    out: list[ev.WorkflowEvent] = []
    per = max(2, n_events // n_exec)
    counter = 0

    def eid() -> str | None:
        nonlocal counter
        counter += 1
        return f"ev-{counter:08d}" if rnd.random() < with_ids else None

    for i in range(n_exec):
        x = f"exec-{i:05d}"
        total = rnd.randint(1, per)
        ts = t0 + rnd.randint(0, 10_000)
        out.append(ev.WorkflowStarted(
            execution_id=x, workflow_id=f"wf-{i % 7}", total_steps=total,
            owner=rnd.choice([None, "ann", "bob"]), data={"n": i}, ts=ts, event_id=eid()))
        for step in range(1, per - 1):
            ts += rnd.randint(0, 3)  # equal ts happen: the eventId / entry id decides
            out.append(ev.WorkflowProgress(
                execution_id=x, completed_steps=min(step, total),
                current_step=rnd.choice([None, f"step-{step}"]),
                data=rnd.choice([None, {"last": step}]), ts=ts, event_id=eid()))
        end = rnd.random()
        ts += 1
        if end < 0.5:
            out.append(ev.WorkflowCompleted(execution_id=x, ts=ts, event_id=eid()))
        elif end < 0.6:
            out.append(ev.WorkflowFailed(execution_id=x, error="boom", ts=ts, event_id=eid()))
        elif end < 0.65:
            out.append(ev.WorkflowCancelled(execution_id=x, ts=ts, event_id=eid()))
    return out


def reference(published: list[tuple[ev.WorkflowEvent, str]]) -> dict[str, State]:
    """The expected state of every execution: (event, entry id) pairs folded in memory."""
    keyed = [(e, e.event_id or entry_id) for e, entry_id in published]
    return {x: to_state(f) for x, f in fold_events(keyed).items()}


def distinct_events(published: list[tuple[ev.WorkflowEvent, str]]) -> set[tuple[str, str]]:
    """Each event's identity (execution, eventId or entry id), duplicates collapsed."""
    return {(e.execution_id, e.event_id or entry_id) for e, entry_id in published}


def as_dicts(states: dict[str, State]) -> dict[str, dict[str, Any]]:
    return {k: state_dict(v) for k, v in states.items()}
