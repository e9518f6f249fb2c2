"""Execution state and the fold (SPEC section 4). Pure: no I/O anywhere in this module.

A `Fold` is an element of a join-semilattice: besides the values it keeps the stamp of the
event each value came from, so `combine` can pick winners without knowing arrival order.
`combine` is commutative, associative and idempotent, hence folding any multiset of events
in any order, with any duplicates, gives the same `Fold`; `to_state` derives the API shape.

The order inside is the stamp `(ts, key)`: `key` is the event's `eventId`, or the stream
entry id standing in for it, compared as a string. Exact stamp ties between different events
(a producer reusing an eventId) are broken by the values themselves so that the result stays
deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from wks.events import (
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowEvent,
    WorkflowFailed,
    WorkflowProgress,
    WorkflowStarted,
)

RANK = {"pending": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}
TERMINAL = frozenset({"completed", "failed", "cancelled"})
ACTIVE = frozenset({"pending", "running"})

_STATUS_OF = {
    WorkflowStarted: "running",
    WorkflowProgress: "running",
    WorkflowCompleted: "completed",
    WorkflowFailed: "failed",
    WorkflowCancelled: "cancelled",
}

# winners, as tuples so that Python's ordering is the fold's ordering:
#   status:  (rank, ts, key, status, error)        greatest wins
#   started: (ts, key, workflowId, totalSteps, owner)  least wins ("" = no owner)
#   step:    (ts, key, currentStep)               greatest wins
#   data[k]: (ts, key, value)                     greatest (ts, key) wins; ties by encoding
StatusW = tuple[int, int, str, str, str]
StartedW = tuple[int, str, str, int, str]
StepW = tuple[int, str, str]
DataW = tuple[int, str, Any]

_json = msgspec.json.Encoder()


class Fold(msgspec.Struct, kw_only=True):
    """The mergeable state of one execution (stored as a blob beside the derived columns)."""

    execution_id: str
    status_w: StatusW | None = None
    started_w: StartedW | None = None
    min_ts: int | None = None
    max_ts: int | None = None
    max_completed: int = 0
    step_w: StepW | None = None
    data_w: dict[str, DataW] = msgspec.field(default_factory=dict)


class State(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """The API shape of an execution (camelCase on the wire)."""

    execution_id: str
    status: str
    progress: int
    current_step: str | None
    completed_steps: int
    data: dict[str, Any]
    started_at: int
    updated_at: int
    workflow_id: str | None = None
    total_steps: int | None = None
    estimated_completion: int | None = None
    error: str | None = None
    owner: str | None = None


def _data_wins(new: DataW, old: DataW) -> bool:
    if new[:2] != old[:2]:
        return new[:2] > old[:2]
    return _json.encode(new[2]) > _json.encode(old[2])


# event class -> (status, its rank); the classes with `data`
_STATUS_RANK = {cls: (status, RANK[status]) for cls, status in _STATUS_OF.items()}
_HAS_DATA = frozenset({WorkflowStarted, WorkflowProgress, WorkflowCompleted})


def apply(fold: Fold, event: WorkflowEvent, key: str) -> Fold:
    """Fold one event into `fold` in place and return it. `key`: eventId or entry id.

    It runs for every event of every batch on the event loop's thread, so it looks its
    event class up once and compares `data` stamps in place (`_data_wins` only on a tie)."""
    ts = event.ts
    cls = type(event)
    status, rank = _STATUS_RANK[cls]
    sw: StatusW = (rank, ts, key, status, event.error if cls is WorkflowFailed else "")
    if fold.status_w is None or sw > fold.status_w:
        fold.status_w = sw
    if fold.min_ts is None or ts < fold.min_ts:
        fold.min_ts = ts
    if fold.max_ts is None or ts > fold.max_ts:
        fold.max_ts = ts
    if cls is WorkflowProgress:
        if event.completed_steps > fold.max_completed:
            fold.max_completed = event.completed_steps
        if event.current_step is not None:
            step: StepW = (ts, key, event.current_step)
            if fold.step_w is None or step > fold.step_w:
                fold.step_w = step
    elif cls is WorkflowStarted:
        st: StartedW = (ts, key, event.workflow_id, event.total_steps, event.owner or "")
        if fold.started_w is None or st < fold.started_w:
            fold.started_w = st
    if cls in _HAS_DATA and event.data:
        dw = fold.data_w
        for name, value in event.data.items():
            old = dw.get(name)
            if (old is None or ts > old[0] or (ts == old[0] and (
                    key > old[1] or (key == old[1] and _data_wins((ts, key, value), old))))):
                dw[name] = (ts, key, value)
    return fold


def merge(state: Fold | None, event: WorkflowEvent, key: str) -> Fold:
    """Pure merge: a new Fold with `event` applied; `state` is not modified."""
    base = copy(state) if state is not None else Fold(execution_id=event.execution_id)
    return apply(base, event, key)


def copy(fold: Fold) -> Fold:
    return msgspec.structs.replace(fold, data_w=dict(fold.data_w))


def _max(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def _min(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


def combine(a: Fold, b: Fold) -> Fold:
    """The semilattice join of two folds of the same execution."""
    if a.execution_id != b.execution_id:
        raise ValueError(f"cannot combine {a.execution_id!r} with {b.execution_id!r}")
    data = dict(a.data_w)
    for name, cand in b.data_w.items():
        old = data.get(name)
        if old is None or _data_wins(cand, old):
            data[name] = cand
    return Fold(
        execution_id=a.execution_id,
        status_w=_max(a.status_w, b.status_w),
        started_w=_min(a.started_w, b.started_w),
        min_ts=_min(a.min_ts, b.min_ts),
        max_ts=_max(a.max_ts, b.max_ts),
        max_completed=max(a.max_completed, b.max_completed),
        step_w=_max(a.step_w, b.step_w),
        data_w=data,
    )


def to_state(fold: Fold) -> State:
    """Derive the API shape (progress, estimatedCompletion, ...) from a fold."""
    status = fold.status_w[3] if fold.status_w else "pending"
    started = fold.started_w
    total = started[3] if started else None
    completed = fold.max_completed
    if status == "completed" and total is not None:
        completed = total
    if status == "completed":
        progress = 100
    elif total:
        progress = min(100, (100 * completed) // total)
    else:
        progress = 0
    started_at = started[0] if started else (fold.min_ts or 0)
    updated_at = fold.max_ts or 0
    estimate = None
    if status == "running" and completed > 0 and total is not None:
        estimate = started_at + (updated_at - started_at) * total // completed
    return State(
        execution_id=fold.execution_id,
        status=status,
        progress=progress,
        current_step=fold.step_w[2] if fold.step_w else None,
        completed_steps=completed,
        data={name: w[2] for name, w in sorted(fold.data_w.items())},
        started_at=started_at,
        updated_at=updated_at,
        workflow_id=started[2] if started else None,
        total_steps=total,
        estimated_completion=estimate,
        error=fold.status_w[4] if fold.status_w and status == "failed" else None,
        owner=(started[4] or None) if started else None,
    )


def fold_events(
    events: Iterable[tuple[WorkflowEvent, str]], folds: dict[str, Fold] | None = None
) -> dict[str, Fold]:
    """Fold (event, key) pairs into one Fold per execution; with `folds`, into those (in
    place: the join with what they held, as `combine` would give), new executions added."""
    if folds is None:
        folds = {}
    for event, key in events:
        eid = event.execution_id
        fold = folds.get(eid)
        if fold is None:
            fold = folds[eid] = Fold(execution_id=eid)
        apply(fold, event, key)
    return folds


_state_encoder = msgspec.json.Encoder()
_fold_encoder = msgspec.msgpack.Encoder()
_fold_decoder = msgspec.msgpack.Decoder(Fold)


def state_dict(state: State) -> dict[str, Any]:
    """The API JSON object of a state: `currentStep` is always present (null when unknown)."""
    out: dict[str, Any] = msgspec.to_builtins(state)
    out.setdefault("currentStep", None)
    return out


def mirror_fields(state: State) -> dict[str, str]:
    """The Redis mirror hash: camelCase fields as strings, data as JSON, absent fields out."""
    pairs = mirror_pairs(state)
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def mirror_pairs(state: State) -> list[str]:
    """`mirror_fields` as [field, value, field, value, ...], as HSET takes them.

    Built field by field rather than through msgspec.to_builtins, and as a list rather than
    a dict: it runs for every touched execution of every batch (the generic walk was a
    third of the mirror's cost, and the dict a third of what was left).
    """
    s = state
    out = ["executionId", s.execution_id, "status", s.status, "progress", str(s.progress),
           "completedSteps", str(s.completed_steps),
           "data", _state_encoder.encode(s.data).decode(),
           "startedAt", str(s.started_at), "updatedAt", str(s.updated_at)]
    if s.current_step is not None:
        out += ("currentStep", s.current_step)
    if s.workflow_id is not None:
        out += ("workflowId", s.workflow_id)
    if s.total_steps is not None:
        out += ("totalSteps", str(s.total_steps))
    if s.estimated_completion is not None:
        out += ("estimatedCompletion", str(s.estimated_completion))
    if s.error is not None:
        out += ("error", s.error)
    if s.owner is not None:
        out += ("owner", s.owner)
    return out


def encode_fold(fold: Fold) -> bytes:
    return _fold_encoder.encode(fold)


def decode_fold(blob: bytes) -> Fold:
    return _fold_decoder.decode(blob)
