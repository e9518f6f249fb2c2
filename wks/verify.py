"""Verifying a replay: the scratch store against the live `executions` rows.

The scratch and the live table are walked side by side in execution-id order (a merge join,
a page at a time, so memory stays flat), and each execution is compared field by field:

- the replayed state with the state derived from the live row's `fold` blob (what the API
  serves), and
- the replayed state with the row's derived columns (what an operator sees with `sqlite3`),
  so a row edited behind the system's back is caught even though its blob is intact.

What counts as "missing" when the replay cannot see everything (a `--from`/`--to` range, a
trimmed stream) is decided per execution from the live `event_log`; see `Coverage`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from wks.audit import (
    MAX_ID,
    EntryId,
    columns_state,
    diff_fields,
    fold_state,
    parse_id,
)
from wks.events import INT64_MAX
from wks.redis import text
from wks.state import Fold, combine, decode_fold
from wks.store import Store

_READ_TIME = frozenset({"estimatedCompletion"})  # computed at read time: no column holds it
_COLUMNS = (
    "execution_id, workflow_id, status, progress, current_step, total_steps, completed_steps,"
    " data, started_at, updated_at, error, owner, fold"
)


@dataclass(frozen=True)
class Coverage:
    """Which stream entries the replay saw: ids in [low, high].

    `low` is the later of `--from` and the stream's first entry (older ones were trimmed);
    `high` is `--to`, or the stream's last entry when the replay started. An execution is
    *covered* when every event the live `event_log` holds for it lies in that range: then
    the replayed state must equal the live one exactly. Otherwise it is *partial*: the
    live state must contain every replayed event (joining the replayed fold into the live
    fold changes nothing), and the live columns must match the live fold.
    `complete` (the whole stream, never trimmed) also makes a live row with no logged events
    that the replay never saw count as missing from the stream.
    """

    low: EntryId
    high: EntryId
    complete: bool


@dataclass
class Difference:
    execution_id: str
    kind: str  # different | missing-live | missing-stream
    fields: list[dict[str, Any]] = field(default_factory=list)  # field, source, live, replayed

    def to_dict(self) -> dict[str, Any]:
        return {"executionId": self.execution_id, "kind": self.kind, "fields": self.fields}


@dataclass
class VerifyReport:
    compared: int = 0  # present on both sides
    equal: int = 0
    partial: int = 0  # partly outside the replayed range, consistent with what was seen
    different: int = 0
    missing_live: int = 0  # replayed, but no live row
    missing_stream: int = 0  # live row whose logged events are in range, not replayed
    outside: int = 0  # live rows the range never touched (only checked for self-consistency)
    differences: list[Difference] = field(default_factory=list)
    max_listed: int = 1000

    @property
    def ok(self) -> bool:
        return not (self.different or self.missing_live or self.missing_stream)

    def add(self, diff: Difference) -> None:
        if len(self.differences) < self.max_listed:  # counts stay exact, the list bounded
            self.differences.append(diff)

    def summary(self) -> dict[str, int]:
        return {
            "compared": self.compared, "equal": self.equal, "partial": self.partial,
            "different": self.different, "missingLive": self.missing_live,
            "missingStream": self.missing_stream, "outsideRange": self.outside,
        }


def _field_diffs(
    expected: dict[str, Any], actual: dict[str, Any], source: str,
    ignore: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    return [
        {"field": name, "source": source, "live": actual.get(name),
         "replayed": expected.get(name)}
        for name in diff_fields(expected, actual, ignore)
    ]


async def column_diffs(live: Store, execution_id: str) -> list[str] | None:
    """The fields where an execution's row columns (what `sqlite3` shows) differ from the
    state its fold blob derives (what the API serves); None when there is no row."""
    rows = await live.fetchall(
        f"SELECT {_COLUMNS} FROM executions WHERE execution_id = ?", (execution_id,))
    if not rows:
        return None
    try:
        blob = fold_state(decode_fold(rows[0][12]))
    except Exception:  # a blob mangled by hand
        blob = {}
    return diff_fields(blob, columns_state(rows[0]), _READ_TIME)


async def _live_pages(live: Store, only: str | None, page: int) -> AsyncIterator[list[Any]]:
    if only is not None:
        rows = await live.fetchall(
            f"SELECT {_COLUMNS} FROM executions WHERE execution_id = ?", (only,))
        if rows:
            yield rows
        return
    last = ""
    while True:
        rows = await live.fetchall(
            f"SELECT {_COLUMNS} FROM executions WHERE execution_id > ?"
            " ORDER BY execution_id LIMIT ?", (last, page))
        if not rows:
            return
        yield rows
        last = rows[-1][0]


async def _rows(live: Store, only: str | None, page: int) -> AsyncIterator[Any]:
    async for rows in _live_pages(live, only, page):
        for row in rows:
            yield row


def _sql_id(entry: EntryId) -> EntryId:
    """A range bound as SQLite can compare it with event_log's entry ids, which are signed
    64-bit (larger ones are refused as events): a bound past that is the largest (a `--to`
    time ends at sequence 2^64-1)."""
    ms, seq = entry
    if ms > INT64_MAX:
        return INT64_MAX, INT64_MAX
    return ms, min(seq, INT64_MAX)


async def logged_outside(live: Store, execution_id: str, cov: Coverage) -> bool:
    """Does the live event_log hold events of this execution outside the replayed range?"""
    return bool(await live.scalar(
        "SELECT EXISTS (SELECT 1 FROM event_log WHERE execution_id = ?"
        " AND ((entry_ms, entry_seq) < (?, ?) OR (entry_ms, entry_seq) > (?, ?)))",
        (execution_id, *_sql_id(cov.low), *_sql_id(cov.high))))


async def logged_inside(live: Store, execution_id: str, cov: Coverage) -> int:
    """How many of this execution's logged events lie in the replayed range (-1: none logged)."""
    row = await live.fetchall(
        "SELECT COUNT(*), SUM((entry_ms, entry_seq) >= (?, ?) AND (entry_ms, entry_seq) <= (?, ?))"
        " FROM event_log WHERE execution_id = ?",
        (*_sql_id(cov.low), *_sql_id(cov.high), execution_id))
    total, inside = row[0]
    return -1 if not total else int(inside or 0)


async def _compare(
    live: Store, row: Any, replayed_fold: Fold, cov: Coverage, report: VerifyReport
) -> None:
    eid = row[0]
    report.compared += 1
    replayed = fold_state(replayed_fold)
    columns = columns_state(row)
    try:
        live_fold: Fold | None = decode_fold(row[12])
    except Exception:  # a blob mangled by hand: msgspec raises several kinds
        live_fold = None
    blob = fold_state(live_fold) if live_fold is not None else {}
    fold_diffs = _field_diffs(replayed, blob, "fold")
    col_diffs = _field_diffs(replayed, columns, "columns", _READ_TIME)
    if not fold_diffs and not col_diffs:
        report.equal += 1
        return
    if live_fold is not None and await logged_outside(live, eid, cov):
        # the replay saw only part of this execution's history
        contained = combine(live_fold, replayed_fold) == live_fold
        diffs = [] if contained else fold_diffs
        diffs += _field_diffs(blob, columns, "columns", _READ_TIME)
        if not diffs:
            report.partial += 1
            return
        fold_diffs, col_diffs = diffs, []
    report.different += 1
    report.add(Difference(eid, "different", fold_diffs + col_diffs))


async def _untouched(live: Store, row: Any, cov: Coverage, report: VerifyReport) -> None:
    eid = row[0]
    inside = await logged_inside(live, eid, cov)
    if inside > 0 or (inside < 0 and cov.complete):
        report.missing_stream += 1
        report.add(Difference(eid, "missing-stream"))
        return
    report.outside += 1
    try:
        blob = fold_state(decode_fold(row[12]))
    except Exception:  # a blob mangled by hand
        blob = {}
    diffs = _field_diffs(blob, columns_state(row), "columns", _READ_TIME)
    if diffs:
        report.different += 1
        report.add(Difference(eid, "different", diffs))


async def verify(
    live: Store, scratch: Store, cov: Coverage, *, execution: str | None = None,
    page: int = 1000, on_row: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Compare every replayed execution with the live rows (see `Coverage` for the rules)."""
    report = VerifyReport()
    folds = scratch.iter_folds(page)
    rows = _rows(live, execution, page)
    fold = await anext(folds, None)
    row = await anext(rows, None)
    while fold is not None or row is not None:
        if row is None or (fold is not None and fold.execution_id < row[0]):
            if execution is None or fold.execution_id == execution:
                report.missing_live += 1
                report.add(Difference(fold.execution_id, "missing-live"))
            fold = await anext(folds, None)
        elif fold is None or row[0] < fold.execution_id:
            await _untouched(live, row, cov, report)
            row = await anext(rows, None)
        else:
            await _compare(live, row, fold, cov, report)
            fold = await anext(folds, None)
            row = await anext(rows, None)
        if on_row is not None:
            on_row(1)
    return report


async def coverage(
    redis: aioredis.Redis, live: Store, stream: str, start: str, end: str, *, bounded: bool
) -> Coverage:
    """The range a replay of [start, end] saw, given what the stream still holds."""
    first = await redis.xrange(stream, count=1)
    low = parse_id("0-0" if start == "-" else start)
    if first:
        first_id = parse_id(text(first[0][0]))
        low = max(low, first_id)
    else:
        first_id = MAX_ID
        low = MAX_ID  # an empty stream: the replay saw nothing
    high = MAX_ID if end == "+" else parse_id(end)
    return Coverage(low, high, complete=not bounded and not await stream_trimmed(
        redis, live, stream, first_id))


async def stream_trimmed(
    redis: aioredis.Redis, live: Store, stream: str, first_id: EntryId
) -> bool:
    """Has the stream lost entries the live store folded (trimmed or deleted)?"""
    with contextlib.suppress(ResponseError):  # XINFO STREAM on a missing key raises
        info = await redis.xinfo_stream(stream)
        deleted = info.get("max-deleted-entry-id")  # Redis 7+
        if deleted is not None and text(deleted) != "0-0":
            return True
    rows = await live.fetchall(
        "SELECT entry_ms, entry_seq FROM event_log"
        " WHERE entry_ms = (SELECT MIN(entry_ms) FROM event_log) ORDER BY entry_seq LIMIT 1")
    return bool(rows) and (rows[0][0], rows[0][1]) < first_id


