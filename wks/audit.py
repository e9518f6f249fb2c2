"""Audit helpers: replay a stream into a scratch store; tell which events changed a state.

Replay reads the stream a page at a time and folds it with the same pure merge
(`Store.apply_batch`, through `wks.replay.fold_range`) into a scratch SQLite file, so memory
stays flat however long the stream is. Comparing the result with the live rows is
wks/verify.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from wks.errors import BadEventError
from wks.events import decode_workflow, split_entry_id
from wks.replay import FoldStats, fold_range
from wks.state import Fold, merge, state_dict, to_state
from wks.store import FOLD_BATCH, Store

EntryId = tuple[int, int]
MAX_ID: EntryId = (2**64 - 1, 2**64 - 1)


# -- pure helpers ----------------------------------------------------------------------------


def columns_state(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    """The API-shaped dict of an `executions` row read from its derived columns."""
    (eid, workflow_id, status, progress, current_step, total_steps, completed_steps, data,
     started_at, updated_at, error, owner) = tuple(row)[:12]
    try:
        parsed = json.loads(data)
    except (TypeError, ValueError):
        parsed = data  # not JSON: keep the raw text so the diff shows it
    out: dict[str, Any] = {
        "executionId": eid, "workflowId": workflow_id, "status": status, "progress": progress,
        "currentStep": current_step, "totalSteps": total_steps,
        "completedSteps": completed_steps, "data": parsed, "startedAt": started_at,
        "updatedAt": updated_at, "error": error, "owner": owner,
    }
    return {k: v for k, v in out.items() if v is not None or k == "currentStep"}


def diff_fields(
    expected: dict[str, Any], actual: dict[str, Any], ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Names of the fields whose values differ (a field absent on one side differs)."""
    names = (expected.keys() | actual.keys()) - ignore
    return sorted(n for n in names if expected.get(n) != actual.get(n))


def fold_state(fold: Fold) -> dict[str, Any]:
    return state_dict(to_state(fold))


def event_changes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refold an execution's logged events in stream order; mark which changed the state.

    Each input is a `Store.events_for` row; each output adds `changed` (bool), `fields`
    (the state fields it changed) and `event` (the decoded JSON, or None when the logged
    payload no longer decodes, in which case `error` says why).
    """
    out: list[dict[str, Any]] = []
    fold: Fold | None = None
    before: dict[str, Any] = {}
    for row in events:
        item = dict(row)
        payload = str(row["payload"]).encode()
        try:
            event = decode_workflow(payload)
        except BadEventError as exc:
            item.update(changed=False, fields=[], event=None, error=exc.reason)
            out.append(item)
            continue
        fold = merge(fold, event, row["eventId"] or row["entryId"])
        after = fold_state(fold)
        fields = diff_fields(before, after)
        item.update(changed=bool(fields), fields=fields, event=json.loads(payload))
        out.append(item)
        before = after
    return out


def final_state(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The state the logged events fold to (None when none decodes)."""
    fold: Fold | None = None
    for row in events:
        with contextlib.suppress(BadEventError):
            event = decode_workflow(str(row["payload"]).encode())
            fold = merge(fold, event, row["eventId"] or row["entryId"])
    return fold_state(fold) if fold is not None else None


def id_text(entry: EntryId) -> str:
    return f"{entry[0]}-{entry[1]}"


def parse_id(text: str) -> EntryId:
    return split_entry_id(text)


# -- replay into a scratch store -------------------------------------------------------------


@dataclass
class ReplayStats(FoldStats):
    """A finished replay's counts (`wks.replay.FoldStats`) and how long it took."""

    seconds: float = 0.0


def _scratch_dir(near: Path) -> Path:
    near.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".wks-replay-", dir=near))


@contextlib.asynccontextmanager
async def scratch_store(out: Path | None, near: Path) -> AsyncIterator[Store]:
    """A scratch Store: `out` when given (kept), else a temp file beside `near` (removed).

    The temp file lives next to the live database, on disk and not in a RAM-backed /tmp,
    so a replay of millions of entries does not grow memory. Durability is off: it is
    rebuilt from the stream if lost.
    """
    tmpdir = _scratch_dir(near) if out is None else None
    path = out if out is not None else tmpdir / "scratch.db"  # type: ignore[operator]
    try:
        store = await Store.open(path)
        try:
            await store.conn.execute("PRAGMA synchronous = OFF")
            yield store
        finally:
            await store.close()
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


async def replay_into(
    redis: aioredis.Redis,
    stream: str,
    store: Store,
    start: str = "-",
    end: str = "+",
    *,
    execution: str | None = None,
    page: int = FOLD_BATCH,
    on_page: Callable[[int], None] | None = None,
) -> ReplayStats:
    """Fold the valid workflow entries of `stream` in [start, end] into `store`
    (`wks.replay.fold_range`: the next page is read, decoded and made into rows while one
    folds); `on_page` gets each page's number of entries."""
    started = time.perf_counter()
    seen = 0

    def paged(folded: FoldStats) -> None:
        nonlocal seen
        if on_page is not None:
            on_page(folded.entries - seen)
        seen = folded.entries

    folded = await fold_range(redis, stream, store, start, end, page=page,
                              execution=execution, on_page=paged)
    return ReplayStats(**dataclasses.asdict(folded), seconds=time.perf_counter() - started)
