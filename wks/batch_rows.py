"""A batch's rows as one SQLite statement each: the executions upsert and the event_log insert.

`executemany` steps once per row, and each step hands the GIL back and must win it again;
with the event loop's thread busy (a publisher in the process, the API, the next batch's
decoding) the writer thread waited for the GIL ~70% of its write time. So a batch goes in
one step: the upsert's rows as one JSON array parameter (`json_each`), its fold blobs as one
BLOB cut with `substr`; the event_log rows as records in one BLOB, also cut with `substr`.
Older SQLite (no `->>`), a value longer than SQLite takes, a NUL character in an upsert
string, or a number records cannot carry: `executemany`, row by row.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from wks.events import DECODE_SLICE, INT64_MAX, event_type, now_ms, split_entry_id
from wks.events import StreamEntry as Entry
from wks.state import Fold, State, encode_fold

_json = msgspec.json.Encoder()

_UPSERT_ROWS = """
INSERT INTO executions (execution_id, workflow_id, status, progress, current_step, total_steps,
    completed_steps, data, started_at, updated_at, error, owner, fold)
{rows}
ON CONFLICT (execution_id) DO UPDATE SET
    workflow_id = excluded.workflow_id, status = excluded.status,
    progress = excluded.progress, current_step = excluded.current_step,
    total_steps = excluded.total_steps, completed_steps = excluded.completed_steps,
    data = excluded.data, started_at = excluded.started_at, updated_at = excluded.updated_at,
    error = excluded.error, owner = excluded.owner, fold = excluded.fold,
    version = executions.version + 1
"""

_LOG_ROWS = """
INSERT OR IGNORE INTO event_log (entry_id, entry_ms, entry_seq, event_id, event_key,
    execution_id, type, ts, payload, applied_at)
{rows}
"""
_UPSERT = _UPSERT_ROWS.format(rows="VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_LOG = _LOG_ROWS.format(rows="VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")

# the one-step forms need the ->> operator (SQLite 3.38); older SQLite keeps executemany
JSON_ROWS = sqlite3.sqlite_version_info >= (3, 38, 0)


def _json_columns(n: int) -> str:
    return ", ".join(f"value->>{i}" for i in range(n))


_UPSERT_JSON = _UPSERT_ROWS.format(
    rows=f"SELECT {_json_columns(12)}, substr(?2, value->>12, value->>13)"
    " FROM json_each(?1) WHERE true")  # WHERE: tells ON CONFLICT from a join's ON
# The event_log rows travel as records in one BLOB, cut with substr: a row's fields read
# with ->> cost SQLite ~3.2 us a row (each row's JSON text is parsed again), cut from a
# record ~1.9 us; the only JSON left is the records' offsets. A record is a fixed-width
# ASCII head, then the row's strings as UTF-8:
#   entry ms, entry seq, ts: 20 digits each (at 0, 20, 40);
#   where entry_id, event_id, execution_id, type and payload end, counted from the record's
#   start: 7 digits each (at 60, 67, 74, 81, 88); "1" if there is an event_id (at 95);
#   the strings from 96 on.
_HEAD = 96


def _field(at: int, width: int) -> str:
    return f"CAST(substr(?2, value + {at}, {width}) AS INTEGER)"


def _text(start: str, end: str) -> str:
    return f"CAST(substr(?2, value + {start}, {end} - {start}) AS TEXT)"


_ENDS = [_field(60 + 7 * i, 7) for i in range(5)]
_ENTRY_ID = _text(str(_HEAD), _ENDS[0])
_EVENT_ID = _text(_ENDS[0], _ENDS[1])
_LOG_RECORDS = _LOG_ROWS.format(rows=(
    f"SELECT {_ENTRY_ID}, {_field(0, 20)}, {_field(20, 20)},"
    f" CASE substr(?2, value + 95, 1) WHEN x'31' THEN {_EVENT_ID} END,"
    f" CASE substr(?2, value + 95, 1) WHEN x'31' THEN {_EVENT_ID} ELSE {_ENTRY_ID} END,"
    f" {_text(_ENDS[1], _ENDS[2])}, {_text(_ENDS[2], _ENDS[3])}, {_field(40, 20)},"
    f" {_text(_ENDS[3], _ENDS[4])}, ?3 FROM json_each(?1)"))

# only for entries with a producer eventId: those are the ones a resend can duplicate
_ALIAS = """
INSERT OR IGNORE INTO event_alias (entry_id, execution_id, event_key)
SELECT ?, ?, ? WHERE EXISTS (
    SELECT 1 FROM event_log WHERE execution_id = ? AND event_key = ? AND entry_id != ?)
"""


def state_row(state: State, fold: Fold) -> tuple[Any, ...]:
    return (
        state.execution_id, state.workflow_id, state.status, state.progress, state.current_step,
        state.total_steps, state.completed_steps, _json.encode(state.data).decode(),
        state.started_at, state.updated_at, state.error, state.owner, encode_fold(fold),
    )


def _payload(raw: bytes) -> bytes:
    if raw.isascii():
        return raw
    return raw.decode("utf-8", "replace").encode()  # ignored keys may hold bytes that are not


_TYPES: dict[type, bytes] = {}  # event class -> its type tag, as the records carry it


class _Unfit(Exception):
    """A row that records cannot carry: the batch goes row by row."""


def _record(entry: Entry, payload: bytes) -> bytes:
    """One event_log row as a record (see _LOG_RECORDS). The entry id's digits are copied,
    not parsed and formatted again: the event loop builds 20,000 of these per batch."""
    ev = entry.event
    entry_id = entry.entry_id.encode()
    ms, _, seq = entry_id.partition(b"-")
    if len(ms) > 18 or len(seq) > 18:  # maybe above 2^63-1, which SQLite's CAST would clamp
        raise _Unfit(entry.entry_id)
    kind = _TYPES.get(type(ev))
    if kind is None:
        kind = _TYPES[type(ev)] = event_type(ev).encode()
    event_id = b"" if ev.event_id is None else ev.event_id.encode()
    execution_id = ev.execution_id.encode()
    e0 = _HEAD + len(entry_id)
    e1 = e0 + len(event_id)
    e2 = e1 + len(execution_id)
    e3 = e2 + len(kind)
    return b"".join((
        ms.zfill(20), (seq or b"0").zfill(20),
        b"%020d%07d%07d%07d%07d%07d%s" % (ev.ts, e0, e1, e2, e3, e3 + len(payload),
                                          b"0" if ev.event_id is None else b"1"),
        entry_id, event_id, execution_id, kind, payload))


@dataclass(slots=True)
class LogRows:
    """A batch's event_log rows (as records, or as tuples where records cannot carry them),
    and its resend candidates."""

    entries: Sequence[Entry]
    payloads: list[bytes]
    records: bytes | None  # None: row by row
    offsets: str  # JSON array: where each record starts, counted from 1
    aliases: list[tuple[Any, ...]]

    def rows(self, applied_at: int) -> list[tuple[Any, ...]]:
        """Whole rows, for executemany."""
        out = []
        for entry, payload in zip(self.entries, self.payloads, strict=True):
            ms, seq = split_entry_id(entry.entry_id)
            ev = entry.event
            out.append((entry.entry_id, ms, seq, ev.event_id, entry.key, ev.execution_id,
                        event_type(ev), ev.ts, payload.decode(), applied_at))
        return out


def _spans(blobs: list[bytes]) -> Iterator[tuple[int, int]]:
    """(offset counted from 1, as substr does; length) of each blob in b"".join(blobs)."""
    sizes = [len(b) for b in blobs]
    return zip(itertools.accumulate(sizes, initial=1), sizes, strict=False)  # one start more


def log_rows(entries: Sequence[Entry]) -> LogRows:
    """The event_log rows of a batch (for `Store.apply_batch`, which builds them otherwise)."""
    payloads: list[bytes] = []
    cut = _add(entries, payloads, [] if _cuttable(entries) else None)
    return _log_rows(entries, payloads, cut)


async def log_rows_sliced(entries: Sequence[Entry]) -> LogRows:
    """`log_rows`, yielding to the event loop every DECODE_SLICE entries: built ahead while
    a batch is in SQLite's hands, it must not hold up that batch's next step."""
    payloads: list[bytes] = []
    cut: list[bytes] | None = [] if _cuttable(entries) else None
    for start in range(0, len(entries), DECODE_SLICE):
        cut = _add(entries[start:start + DECODE_SLICE], payloads, cut)
        await asyncio.sleep(0)
    return _log_rows(entries, payloads, cut)


def _add(part: Sequence[Entry], payloads: list[bytes], cut: list[bytes] | None
         ) -> list[bytes] | None:
    """Append `part`'s payloads, and its records to `cut`; None once a row does not fit."""
    more = [_payload(e.raw) for e in part]
    payloads += more
    if cut is None:
        return None
    try:
        cut += [_record(e, p) for e, p in zip(part, more, strict=True)]
    except _Unfit:
        return None
    return cut


def _cuttable(entries: Sequence[Entry]) -> bool:
    """Can records carry these rows? 20 digits hold any valid ts; one that bypassed
    validation goes row by row, and fails there. (`_record` also leaves entry ids of 19
    digits or more to the row-by-row path, which stores those up to 2^63-1 and refuses the
    rest: SQLite's CAST would clamp them.)"""
    return JSON_ROWS and all(0 <= e.event.ts <= INT64_MAX for e in entries)


def _log_rows(entries: Sequence[Entry], payloads: list[bytes], cut: list[bytes] | None
              ) -> LogRows:
    records: bytes | None = None
    offsets = "[]"
    if cut is not None:
        offsets = _json.encode([at for at, _ in _spans(cut)]).decode()
        records = b"".join(cut)
    aliases = [
        (e.entry_id, e.event.execution_id, e.key, e.event.execution_id, e.key, e.entry_id)
        for e in entries
        if e.event.event_id is not None
    ]
    return LogRows(entries, payloads, records, offsets, aliases)


def _in_transaction(db: sqlite3.Connection) -> None:
    """A batch's writes are queued one after the other; if SQLite rolled the transaction
    back on an earlier one's error (disk full, I/O error), a later one must not run as a
    statement of its own and commit alone."""
    if not db.in_transaction:
        raise sqlite3.OperationalError("the batch's transaction is no longer open")


def _max_param(db: sqlite3.Connection) -> int:
    """The longest string or BLOB SQLite takes as one value (1e9 bytes unless lowered)."""
    return db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)


def _as_json(rows: list[tuple[Any, ...]], limit: int) -> str | None:
    """`rows` as one JSON array for json_each; None without JSON_ROWS, when it would be
    longer than `limit`, or when a string holds a NUL character (SQLite's JSON functions cut
    a string at \\u0000): such rows go row by row. The check may also hit a payload's escaped
    backslash: slower, never wrong."""
    if not JSON_ROWS:
        return None
    text = _json.encode(rows)
    return None if len(text) > limit or b"\\u0000" in text else text.decode()


def _cut(rows: list[tuple[Any, ...]], limit: int) -> tuple[str, bytes] | None:
    """The rows for a one-step statement: their last column (bytes) replaced by an offset and
    a length into one BLOB of them all, the rest as one JSON array. None: go row by row
    (also when the BLOB would be longer than `limit`)."""
    if not JSON_ROWS:
        return None
    blobs = [row[-1] for row in rows]
    joined = b"".join(blobs)
    if len(joined) > limit:
        return None
    meta = [(*row[:-1], at, n) for row, (at, n) in zip(rows, _spans(blobs), strict=True)]
    param = _as_json(meta, limit)
    return None if param is None else (param, joined)


def write_states(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    _in_transaction(db)
    cut = _cut(rows, _max_param(db))
    if cut is None:
        db.executemany(_UPSERT, rows)
    else:
        db.execute(_UPSERT_JSON, cut)


def write_log(db: sqlite3.Connection, logs: LogRows) -> None:
    _in_transaction(db)
    applied_at = now_ms()
    before = db.total_changes
    if logs.records is None or len(logs.records) > _max_param(db):
        db.executemany(_LOG, logs.rows(applied_at))
    else:
        db.execute(_LOG_RECORDS, (logs.offsets, logs.records, applied_at))
    # every entry got its own event_log row: none can be a resend of a logged event, so the
    # alias check (a subquery per entry) is skipped in the common case
    if logs.aliases and db.total_changes - before < len(logs.entries):
        db.executemany(_ALIAS, logs.aliases)


def write_batch(db: sqlite3.Connection, rows: list[tuple[Any, ...]], logs: LogRows) -> None:
    write_log(db, logs)
    write_states(db, rows)
