"""The SQLite store (aiosqlite): migrations, one transaction per batch, queries.

WAL with `synchronous=FULL`: an acknowledged event survives power loss. A batch is applied
inside one write transaction: load the touched executions, merge, upsert, log the events
(a redelivered event is recognised by its identity and ignored), run the caller's
`before_commit` hook, commit. Because the merge happens inside the write lock, any number of
processes can fold into one database concurrently and still agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from wks.errors import StoreError
from wks.events import DECODE_SLICE, INT64_MAX, event_type, now_ms, split_entry_id
from wks.events import StreamEntry as Entry
from wks.migrations import MIGRATIONS
from wks.state import Fold, State, combine, decode_fold, encode_fold, fold_events, to_state

_CHUNK = 900  # stay under SQLite's bound-parameter limit on old builds
_INLINE_MAX = 64  # batches up to this many entries are written from the loop's thread
# Entries per fold transaction when a backlog allows (the state group's reads, replay pages).
# A commit writes every page the batch dirtied, and with executions spread over the indexes
# that is about one page per execution; the per-execution work (upsert, mirror) also shrinks
# per event as more of an execution's events share a batch. 10,000 entries per commit
# instead of 1,000 raised the fold rate by 75%, 20,000 instead of 10,000 by another 20-27%
# (40,000: no further gain); see `wks bench`. At low rates batches stay small. The costs:
# a longer write lock (~0.3 s), ~35 MiB more resident memory (two batches in hand), and in
# `wks up` event-loop pauses of tens of ms while a full batch is folded, during a backlog.
FOLD_BATCH = 20_000
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

# The same two writes with every row in one JSON array parameter: one statement step for the
# whole batch. executemany steps once per row, and each step hands the GIL back and must win
# it again; with the event loop's thread busy (a publisher in the process, the API, the next
# batch's decoding) the writer thread waited for the GIL ~70% of its write time, and 20,000
# events/s could not be kept up with. The fold blobs travel as one concatenated BLOB cut with
# substr (JSON holds no bytes). Needs the ->> operator (SQLite 3.38); older SQLite keeps
# executemany.
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


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit mid-migration)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def _spans(blobs: list[bytes]) -> Iterator[tuple[int, int]]:
    """(offset counted from 1, as substr does; length) of each blob in b"".join(blobs)."""
    sizes = [len(b) for b in blobs]
    return zip(itertools.accumulate(sizes, initial=1), sizes, strict=False)  # one start more


def log_rows(entries: Sequence[Entry]) -> LogRows:
    """The event_log rows of a batch (for `Store.apply_batch`, which builds them otherwise)."""
    payloads = [_payload(e.raw) for e in entries]
    cut: list[bytes] | None = None
    if _cuttable(entries):
        try:
            cut = [_record(e, p) for e, p in zip(entries, payloads, strict=True)]
        except _Unfit:
            cut = None
    return _log_rows(entries, payloads, cut)


async def log_rows_sliced(entries: Sequence[Entry]) -> LogRows:
    """`log_rows`, yielding to the event loop every DECODE_SLICE entries: built ahead while
    a batch is in SQLite's hands, it must not hold up that batch's next step."""
    payloads: list[bytes] = []
    cut: list[bytes] | None = [] if _cuttable(entries) else None
    for start in range(0, len(entries), DECODE_SLICE):
        part = entries[start:start + DECODE_SLICE]
        more = [_payload(e.raw) for e in part]
        payloads += more
        if cut is not None:
            try:
                cut += [_record(e, p) for e, p in zip(part, more, strict=True)]
            except _Unfit:
                cut = None
        await asyncio.sleep(0)
    return _log_rows(entries, payloads, cut)


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
        offsets = _json.encode([at for at, _ in _spans(cut)][:len(cut)]).decode()
        records = b"".join(cut)
    aliases = [
        (e.entry_id, e.event.execution_id, e.key, e.event.execution_id, e.key, e.entry_id)
        for e in entries
        if e.event.event_id is not None
    ]
    return LogRows(entries, payloads, records, offsets, aliases)


def _merged(
    batch: dict[str, Fold], found: list[tuple[str, bytes]]
) -> tuple[list[State], list[tuple[Any, ...]]]:
    """Combine the batch's folds with the stored ones: the new states and their rows."""
    for eid, blob in found:
        batch[eid] = combine(decode_fold(blob), batch[eid])
    states = [to_state(f) for f in batch.values()]
    return states, [state_row(s, f) for s, f in zip(states, batch.values(), strict=True)]


BeforeCommit = Callable[[list[State]], Awaitable[None]]


def _run(conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Run `fn(sqlite3_connection, *args)` on the connection's own thread, in queue order.

    aiosqlite has no public call for this: a hop per statement costs a thread switch and a
    loop wake-up each, which dominated small batches (and so latency).
    """
    return conn._execute(fn, conn._conn, *args)


async def _queued(
    conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any
) -> asyncio.Future[Any]:
    """`_run` as a task that has already handed `fn` to the connection's thread when this
    returns: the thread starts on it while the event loop goes on with other work (a task
    only starts at the loop's next turn, after whatever the caller does next)."""
    task = asyncio.ensure_future(_run(conn, fn, *args))
    await asyncio.sleep(0)  # one turn: the task queues `fn`, in call order
    return task


def _in_transaction(db: sqlite3.Connection) -> None:
    """A batch's writes are queued one after the other; if SQLite rolled the transaction
    back on an earlier one's error (disk full, I/O error), a later one must not run as a
    statement of its own and commit alone."""
    if not db.in_transaction:
        raise sqlite3.OperationalError("the batch's transaction is no longer open")


def _begin_and_load(db: sqlite3.Connection, ids: list[str]) -> list[tuple[str, bytes]]:
    db.execute("BEGIN IMMEDIATE")
    return _load(db, ids)


def _begin_now(db: sqlite3.Connection, busy_timeout_ms: int) -> bool:
    """BEGIN IMMEDIATE without waiting: False while another connection holds the write lock."""
    db.execute("PRAGMA busy_timeout = 0")
    try:
        db.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError as exc:
        if db.in_transaction or not ("locked" in str(exc) or "busy" in str(exc)):
            raise
        return False
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")


# the stored folds of a batch as one row (one step, see JSON_ROWS), the blobs as hex
_LOAD_JSON = """
SELECT json_group_array(json_array(execution_id, hex(fold))) FROM executions
WHERE execution_id IN (SELECT value FROM json_each(?))
"""
_found = msgspec.json.Decoder(list[tuple[str, str]])


def _load(db: sqlite3.Connection, ids: list[str]) -> list[tuple[str, bytes]]:
    """The stored folds of these executions."""
    if JSON_ROWS:
        try:
            (found_json,) = db.execute(_LOAD_JSON, (_json.encode(ids).decode(),)).fetchone()
            return [(eid, bytes.fromhex(blob)) for eid, blob in _found.decode(found_json)]
        except sqlite3.DataError:  # the folds, in hex, longer than SQLite's string limit
            pass
    found: list[tuple[str, bytes]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found.extend(db.execute(
            f"SELECT execution_id, fold FROM executions WHERE execution_id IN ({marks})", chunk
        ).fetchall())
    return found


def _rollback_open(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


async def _rollback_queued(conn: aiosqlite.Connection) -> None:
    """Roll back whatever is open, queued behind the calls already on the connection's
    thread; shielded, so a cancelled batch still leaves no transaction behind."""
    with contextlib.suppress(ValueError):  # the connection is already closed
        await asyncio.shield(_run(conn, _rollback_open))


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


def _upsert(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    _in_transaction(db)
    cut = _cut(rows, _max_param(db))
    if cut is None:
        db.executemany(_UPSERT, rows)
    else:
        db.execute(_UPSERT_JSON, cut)


def _log(db: sqlite3.Connection, logs: LogRows) -> None:
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


def _write(db: sqlite3.Connection, rows: list[tuple[Any, ...]], logs: LogRows) -> None:
    _log(db, logs)
    _upsert(db, rows)


class Store:
    """One aiosqlite connection. Open one per role: a writer for a consumer, a reader for HTTP."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._busy_timeout_ms = 30_000
        # a small batch's COMMIT (its fsync) on the event loop's thread too: for a worker's
        # loop, where the other services (backups, retention) work in seconds and the trip
        # to the connection's thread and back cost ~0.7 ms of a ~2 ms publish-to-committed
        # latency at 1,000 events/s. The COMMIT that crosses wal_autocheckpoint then runs
        # the checkpoint there too (tens of ms, every ~40 MiB of log). Off where the HTTP
        # API shares the loop.
        self.commit_small_on_loop = False

    @classmethod
    async def open(cls, path: Path | str, *, busy_timeout_ms: int = 30_000) -> Store:
        """Open (creating parent directories), set WAL + synchronous=FULL, migrate."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # the fold writes small batches from the event loop's thread (apply_batch)
            conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError("open", str(path), exc) from exc
        store = cls(conn, path)
        deadline = time.monotonic() + busy_timeout_ms / 1000
        while True:
            try:
                await store._set_up(busy_timeout_ms)
                return store
            except sqlite3.OperationalError as exc:
                # processes opening a new database at once: SQLite answers BUSY at once,
                # without the busy handler (deadlock avoidance), when two of them upgrade
                # their locks for the switch to WAL or the first migration; both back off
                # and the loser finds the work done
                if "locked" in str(exc) and time.monotonic() < deadline:
                    await asyncio.sleep(random.uniform(0.02, 0.1))
                    continue
                await conn.close()
                raise StoreError("migrate", str(path), exc) from exc
            except sqlite3.Error as exc:
                await conn.close()
                raise StoreError("migrate", str(path), exc) from exc

    async def _set_up(self, busy_timeout_ms: int) -> None:
        conn = self._conn
        self._busy_timeout_ms = busy_timeout_ms
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        # a fold batch dirties pages all over the indexes: a 64 MiB page cache (a bound, not
        # an allocation) keeps them from being re-read, and checkpointing every ~40 MiB of
        # WAL instead of ~4 MiB writes a hot page back once, not per commit
        await conn.execute("PRAGMA cache_size = -65536")
        await conn.execute("PRAGMA wal_autocheckpoint = 10000")
        await self._migrate()

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        return self._conn

    @contextlib.asynccontextmanager
    async def transaction(self, operation: str) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on any error.

        SQLite errors come out as StoreError naming `operation` and the database file."""
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(operation, str(self.path), exc) from exc

    async def _migrate(self) -> None:
        conn = self._conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER NOT NULL, applied_at INTEGER NOT NULL)"
            )
            async with conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as c:
                row = await c.fetchone()
            current = row[0] if row else 0
            for number, script in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                for statement in _statements(script):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (number, now_ms()),
                )
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    async def schema_version(self) -> int:
        return int(await self.scalar("SELECT MAX(version) FROM schema_version") or 0)

    # -- the write path ---------------------------------------------------------------------

    async def apply_batch(
        self, entries: Sequence[Entry], before_commit: BeforeCommit | None = None,
        logs: LogRows | None = None,
    ) -> list[State]:
        """Fold `entries` into the store in one transaction; return the touched states.
        `logs`: their `log_rows()`, when the caller built them ahead.

        The SQLite work runs in four hops to the connection's thread rather than one per
        statement: begin and load, the event_log insert (the longest, queued right behind the
        load: it needs no merged state), the executions upsert, commit. Meanwhile the event
        loop folds, merges, and runs `before_commit` (the Redis mirror), so both cores work.
        The writes are known to have succeeded before COMMIT is queued.
        """
        if not entries:
            return []
        batch: dict[str, Fold] | None = None
        if len(entries) <= _INLINE_MAX:
            batch = fold_events((e.event, e.key) for e in entries)
            states = await self._apply_inline(entries, batch, before_commit, logs)
            if states is not None:
                return states
        conn = self._conn
        loading: asyncio.Future[list[tuple[str, bytes]]] | None = None
        logging: asyncio.Future[None] | None = None
        write: asyncio.Future[None] | None = None
        try:
            try:
                # SQLite's thread gets its work as soon as it can start on it: the load, then
                # the event_log insert (it needs no merged state; if BEGIN failed it refuses
                # to run), while this thread folds
                ids = list(batch) if batch is not None else \
                    list({e.event.execution_id: None for e in entries})
                loading = await _queued(conn, _begin_and_load, ids)
                logging = await _queued(
                    conn, _log, log_rows(entries) if logs is None else logs)
                try:
                    if batch is None:
                        batch = fold_events((e.event, e.key) for e in entries)
                finally:
                    await asyncio.wait([loading])
                found = loading.result()  # raises if BEGIN failed
                states, rows = _merged(batch, found)
                write = await _queued(conn, _upsert, rows)
                if before_commit is not None:
                    await before_commit(states)
                await logging
                await write
                await conn.execute("COMMIT")
            except BaseException:
                # let this batch's own calls finish first (a cancelled wait does not stop a
                # BEGIN or a write already handed to the connection's thread)
                for step in (loading, logging, write):
                    if step is not None and not step.done():
                        await asyncio.wait([step])
                    if step is not None and not step.cancelled():
                        step.exception()  # retrieved: the error that matters is being raised
                await _rollback_queued(conn)  # behind them, so it cannot be overtaken
                raise
        except sqlite3.Error as exc:
            raise StoreError("apply batch", str(self.path), exc) from exc
        return states

    async def _apply_inline(
        self, entries: Sequence[Entry], batch: dict[str, Fold], before_commit: BeforeCommit | None,
        logs: LogRows | None,
    ) -> list[State] | None:
        """A small batch: begin, load and write straight from the event loop's thread.

        At low rates batches hold a few entries whose SQLite work (~0.2 ms) costs less than
        a trip to the connection's thread (~0.5 ms each on a busy loop: the GIL hand-over),
        and latency is what matters there. The loop never waits for the write lock (None
        when another process holds it: the caller takes the threaded path, which waits up
        to the busy timeout); it waits for the disk only with `commit_small_on_loop`
        (otherwise COMMIT, the fsync, runs on the connection's thread). Nothing else is
        queued on this connection meanwhile: the consumer that owns it applies one batch at
        a time.
        """
        conn = self._conn
        db: sqlite3.Connection = conn._conn  # aiosqlite's connection, opened for any thread
        try:
            if not _begin_now(db, self._busy_timeout_ms):
                return None
            try:
                found = _load(db, list(batch))
                if logs is None:
                    logs = log_rows(entries)
                states, rows = _merged(batch, found)
                _write(db, rows, logs)
                if before_commit is not None:
                    await before_commit(states)
                if self.commit_small_on_loop:
                    db.execute("COMMIT")
                else:
                    await conn.execute("COMMIT")
            except BaseException:
                await _rollback_queued(conn)
                raise
        except sqlite3.Error as exc:
            raise StoreError("apply batch", str(self.path), exc) from exc
        return states

    # -- reads ------------------------------------------------------------------------------

    # one trip to the connection's thread per read (execute, fetch and close together):
    # a cursor's execute / fetchone / close are three, and the API pays each per request

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = await self._conn.execute_fetchall(sql, tuple(params))
        for row in rows:
            return row[0]
        return None

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def get_fold(self, execution_id: str) -> Fold | None:
        blob = await self.scalar(
            "SELECT fold FROM executions WHERE execution_id = ?", (execution_id,)
        )
        return decode_fold(blob) if blob is not None else None

    async def get_state(self, execution_id: str) -> State | None:
        fold = await self.get_fold(execution_id)
        return to_state(fold) if fold is not None else None

    async def entry_applied(self, entry_id: str) -> bool:
        """Has this stream entry's event been committed (directly or as a resend)?"""
        found = await self.scalar(
            "SELECT EXISTS (SELECT 1 FROM event_log WHERE entry_id = ?)"
            " OR EXISTS (SELECT 1 FROM event_alias WHERE entry_id = ?)",
            (entry_id, entry_id),
        )
        return bool(found)

    async def iter_folds(self, batch: int = 1000) -> Any:
        """Every execution's fold, in execution id order, a page at a time (flat memory)."""
        last = ""
        while True:
            rows = await self.fetchall(
                "SELECT execution_id, fold FROM executions WHERE execution_id > ?"
                " ORDER BY execution_id LIMIT ?",
                (last, batch),
            )
            if not rows:
                return
            for _eid, blob in rows:
                yield decode_fold(blob)
            last = rows[-1][0]

    async def events_for(self, execution_id: str) -> list[dict[str, Any]]:
        """The execution's logged events in stream order."""
        rows = await self.fetchall(
            "SELECT entry_id, event_id, type, ts, payload, applied_at FROM event_log"
            " WHERE execution_id = ? ORDER BY entry_ms, entry_seq",
            (execution_id,),
        )
        return [
            {"entryId": r[0], "eventId": r[1], "type": r[2], "ts": r[3], "payload": r[4],
             "appliedAt": r[5]}
            for r in rows
        ]
