"""A batch's rows as one SQLite statement each: the executions upsert and the event_log insert.

`executemany` steps once per row, and each step hands the GIL back and must win it again;
with the event loop's thread busy (a publisher in the process, the API, the next batch's
decoding) the writer thread waited for the GIL ~70% of its write time. So a batch goes in
one step: the upsert's rows as one JSON array parameter (`json_each`), its fold blobs as one
BLOB cut with `substr`; the event_log rows as records in one BLOB, also cut with `substr`.
Older SQLite (no `->>`), a value longer than SQLite takes, a NUL character in an upsert
string, a space in an id or an empty eventId (built in code, past the decoder's check), or a
number records cannot carry: `executemany`, row by row; so does an upsert of up to PLAIN_MAX
executions. So does a batch of up to INLINE_MAX entries, written from the event loop's
thread, where no other thread waits.
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
# up to this many executions, on any thread, the upsert goes by executemany and the load
# by IN lists: building the one-step parameters costs more than they save for a few
PLAIN_MAX = 4
# Batches up to this many entries are written from the event loop's thread (`wks.store`),
# row by row whatever their number of executions: there a step costs no hand-over, and the
# one-step forms are there for the GIL, not for SQLite. On one thread executemany costs
# about half their CPU (upsert 9-11 against 19-28 us a row, event_log 7-9 against 11-20 with
# the records built; batches of 22-200 rows measured), and a batch this size holds the loop
# a few ms at most. At 10,000 events/s (batches of tens) the consumer's CPU went from 86-88
# to 74-78 us an event and its p99 from 49-82 to 26-48 ms, against 64 entries before. Such a
# batch goes to the connection's thread only while another process holds the write lock;
# there, rarely, its event_log rows go row by row (no records were built for it), and its
# upsert and load take the one-step forms past PLAIN_MAX executions.
INLINE_MAX = 300


def _json_columns(n: int) -> str:
    return ", ".join(f"value->>{i}" for i in range(n))


_UPSERT_JSON = _UPSERT_ROWS.format(
    rows=f"SELECT {_json_columns(12)}, substr(?2, value->>12, value->>13)"
    " FROM json_each(?1) WHERE true")  # WHERE: tells ON CONFLICT from a join's ON
# The event_log rows travel as fixed-width records in one BLOB, and their payloads in a
# second, both cut with substr; the only JSON left is where each payload starts (json_each's
# `value`; its `key`, the row's index, finds the record). Every field SQLite reads costs it
# a function call or two: fixed widths spare it reading where each string ends, which took
# the statement from ~34,000 to ~26,000 instructions a row (callgrind, 60,000 rows with the
# table's indexes). A record is an ASCII head, then the strings as UTF-8:
#   entry ms, entry seq, ts: 20 digits each (at 0, 20, 40); the payload's length in bytes:
#   7 digits (at 60); "1" if the event has an eventId (at 67);
#   then entry_id, the event's key (its eventId, else the entry id), execution_id and type,
#   each padded with spaces to the batch's widest (rtrim cuts them off again: none of these
#   strings holds a space, or its batch goes row by row).
# Parameters: ?1 the payloads' starts (JSON), ?2 the records, ?3 a record's width, ?4-?7 where
# its four strings start, ?8 the payloads, ?9 applied_at.
_HEAD = 68
_AT = "(key * ?3 + 1)"  # where the row's record starts in ?2, counted from 1 as substr does


def _field(at: int, width: int) -> str:
    return f"CAST(substr(?2, {_AT} + {at}, {width}) AS INTEGER)"


def _text(start: str, end: str) -> str:
    return f"rtrim(substr(?2, {_AT} + {start}, {end} - {start}))"


_ENTRY_ID, _KEY, _EXECUTION_ID, _TYPE = (
    _text(f"?{4 + i}", f"?{5 + i}" if i < 3 else "?3") for i in range(4))
_LOG_RECORDS = _LOG_ROWS.format(rows=(
    f"SELECT {_ENTRY_ID}, {_field(0, 20)}, {_field(20, 20)},"
    f" CASE substr(?2, {_AT} + 67, 1) WHEN x'31' THEN {_KEY} END, {_KEY},"
    f" {_EXECUTION_ID}, {_TYPE}, {_field(40, 20)},"
    f" CAST(substr(?8, value, {_field(60, 7)}) AS TEXT), ?9 FROM json_each(?1)"))

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
_PAYLOAD_MAX = 9_999_999  # what 7 digits hold (entries are far smaller: maxEventBytes)


class _Unfit(Exception):
    """A row that records cannot carry: the batch goes row by row."""


def _kind(event: Any) -> bytes:
    """The type tag of an event class not seen yet (`_TYPES` holds those seen)."""
    kind = _TYPES[type(event)] = event_type(event).encode()
    return kind


@dataclass(slots=True)
class _Columns:
    """A slice of event_log rows as columns: what its records are made of."""

    events: list[Any]
    payloads: list[bytes]
    parts: list[tuple[bytes, bytes, bytes]]  # each entry id split at its "-"
    strings: tuple[list[bytes], ...]  # entry_id, key, execution_id, type: padded in records


def _columns(part: Sequence[Entry], payloads: list[bytes]) -> _Columns:
    """A slice's columns (see _LOG_RECORDS), each built in one pass: the event loop builds
    20,000 rows a batch, and a function call per row cost more. The entry id's digits are
    copied, not parsed and formatted again."""
    ids = [e.entry_id.encode() for e in part]
    events = [e.event for e in part]
    keys = [i if ev.event_id is None else ev.event_id.encode()
            for i, ev in zip(ids, events, strict=True)]
    if b"" in keys:  # an empty eventId (it bypassed validation) is no key: row by row
        raise _Unfit("an empty eventId")
    parts = [i.partition(b"-") for i in ids]
    if max(map(len, ids)) > 18 and max(max(len(ms), len(seq)) for ms, _, seq in parts) > 18:
        raise _Unfit("19 digits")  # maybe above 2^63-1, which SQLite's CAST would clamp
    if max(map(len, payloads)) > _PAYLOAD_MAX:
        raise _Unfit("a payload longer than 7 digits say")
    executions = [ev.execution_id.encode() for ev in events]
    kinds = [_TYPES.get(type(ev)) or _kind(ev) for ev in events]
    return _Columns(events, payloads, parts, (ids, keys, executions, kinds))


@dataclass(slots=True)
class LogRows:
    """A batch's event_log rows (as records, or as tuples where records cannot carry them)."""

    entries: Sequence[Entry]
    payloads: list[bytes]
    records: bytes | None  # None: row by row
    layout: tuple[int, ...]  # a record's width, where its four strings start (?3-?7)
    offsets: str  # JSON array: where each payload starts in `joined`, counted from 1
    joined: bytes  # the payloads, one after the other

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


class _Cut:
    """Records being built: the slices' columns, then the batch's widths, then the records."""

    def __init__(self) -> None:
        self.slices: list[_Columns] = []
        self.widths = [0, 0, 0, 0]  # the widest entry_id, key, execution_id, type
        self.records: list[bytes] = []

    def add(self, part: Sequence[Entry], payloads: list[bytes]) -> None:
        if not part:
            return
        columns = _columns(part, payloads)
        for i, column in enumerate(columns.strings):
            if b" " in b"".join(column):  # valid ids have none; the padding is spaces
                raise _Unfit("a space")
            self.widths[i] = max(self.widths[i], *map(len, column))
        self.slices.append(columns)

    def pad(self, index: int) -> None:
        """The records of the `index`-th slice added, each one format: its head (entry ms
        and seq, ts, the payload's length, "1" if it has an eventId), then its four strings
        padded to the batch's widths."""
        c = self.slices[index]
        form = b"%%s%%s%%020d%%07d%%s%%-%ds%%-%ds%%-%ds%%-%ds" % tuple(self.widths)
        self.records += [
            form % (ms.zfill(20), (seq or b"0").zfill(20), ev.ts, len(payload),
                    b"0" if ev.event_id is None else b"1", entry_id, key, execution, kind)
            for (ms, _, seq), ev, payload, entry_id, key, execution, kind
            in zip(c.parts, c.events, c.payloads, *c.strings, strict=True)]

    def layout(self) -> tuple[int, ...]:
        starts = list(itertools.accumulate(self.widths, initial=_HEAD))
        return (starts[-1], *starts[:-1])


def log_rows(entries: Sequence[Entry]) -> LogRows:
    """The event_log rows of a batch (for `Store.apply_batch`, which builds them otherwise)."""
    payloads: list[bytes] = []
    cut = _add(entries, payloads, _Cut() if _cuttable(entries) else None)
    if cut is not None:
        for index in range(len(cut.slices)):
            cut.pad(index)
    return _log_rows(entries, payloads, cut)


async def log_rows_sliced(entries: Sequence[Entry]) -> LogRows:
    """`log_rows`, yielding to the event loop every DECODE_SLICE entries: built ahead while
    a batch is in SQLite's hands, it must not hold up that batch's next step. A batch of
    one slice is built at once: each yield lets the loop's other work in first, and at low
    rates that work (the batch in hand, its XACK) stood in front of this batch's turn."""
    if len(entries) <= DECODE_SLICE:
        return log_rows(entries)
    payloads: list[bytes] = []
    cut = _Cut() if _cuttable(entries) else None
    for start in range(0, len(entries), DECODE_SLICE):
        cut = _add(entries[start:start + DECODE_SLICE], payloads, cut)
        await asyncio.sleep(0)
    if cut is not None:
        for index in range(len(cut.slices)):
            cut.pad(index)
            await asyncio.sleep(0)
    return _log_rows(entries, payloads, cut)


def _add(part: Sequence[Entry], payloads: list[bytes], cut: _Cut | None) -> _Cut | None:
    """Append `part`'s payloads, and its rows' parts to `cut`; None once a row does not fit."""
    more = [_payload(e.raw) for e in part]
    payloads += more
    if cut is None:
        return None
    try:
        cut.add(part, more)
    except _Unfit:
        return None
    return cut


def _cuttable(entries: Sequence[Entry]) -> bool:
    """Can records carry these rows, and is it worth it? A batch of up to INLINE_MAX entries
    (written from the event loop's thread, where a step costs no GIL hand-over) goes row by
    row, which also skips building records on the loop. 20 digits hold any valid ts;
    one that bypassed validation goes row by row, and fails there. (`_columns` also leaves
    entry ids of 19 digits or more to the row-by-row path, which stores those up to 2^63-1
    and refuses the rest: SQLite's CAST would clamp them.)"""
    return (JSON_ROWS and len(entries) > INLINE_MAX
            and all(0 <= e.event.ts <= INT64_MAX for e in entries))


def _log_rows(entries: Sequence[Entry], payloads: list[bytes], cut: _Cut | None) -> LogRows:
    records: bytes | None = None
    layout: tuple[int, ...] = ()
    offsets = "[]"
    joined = b""
    if cut is not None:
        records = b"".join(cut.records)
        layout = cut.layout()
        offsets = _json.encode([at for at, _ in _spans(payloads)]).decode()
        joined = b"".join(payloads)
    return LogRows(entries, payloads, records, layout, offsets, joined)


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


def write_states(db: sqlite3.Connection, rows: list[tuple[Any, ...]], *,
                 plain: bool = False) -> None:
    """The upsert; `plain`: row by row (from the event loop's thread, see INLINE_MAX)."""
    _in_transaction(db)
    cut = None if plain or len(rows) <= PLAIN_MAX else _cut(rows, _max_param(db))
    if cut is None:
        db.executemany(_UPSERT, rows)
    else:
        db.execute(_UPSERT_JSON, cut)


def _aliases(entries: Sequence[Entry]) -> list[tuple[Any, ...]]:
    """The `_ALIAS` rows of the entries with an eventId: those a resend can duplicate. Built
    only for a batch where some entry got no row of its own (the event was logged already),
    on SQLite's thread: a 6-tuple for every entry of every batch took 2% of the event loop's
    time in a fold (py-spy) for a check that finds nothing nearly always."""
    return [(e.entry_id, e.event.execution_id, e.key, e.event.execution_id, e.key, e.entry_id)
            for e in entries if e.event.event_id is not None]


def write_log(db: sqlite3.Connection, logs: LogRows) -> None:
    _in_transaction(db)
    applied_at = now_ms()
    before = db.total_changes
    limit = _max_param(db)
    if logs.records is None or max(len(logs.records), len(logs.joined)) > limit:
        db.executemany(_LOG, logs.rows(applied_at))
    else:
        db.execute(_LOG_RECORDS,
                   (logs.offsets, logs.records, *logs.layout, logs.joined, applied_at))
    # every entry got its own event_log row: none can be a resend of a logged event, so the
    # alias check (a subquery per entry) is skipped in the common case
    if db.total_changes - before < len(logs.entries):
        db.executemany(_ALIAS, _aliases(logs.entries))


def write_batch(db: sqlite3.Connection, rows: list[tuple[Any, ...]], logs: LogRows) -> None:
    """Both writes of a batch from the event loop's thread: row by row (INLINE_MAX)."""
    write_log(db, logs)
    write_states(db, rows, plain=True)
