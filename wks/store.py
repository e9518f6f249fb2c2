"""The SQLite store (aiosqlite): migrations, one transaction per batch, queries.

WAL with `synchronous=FULL`: an acknowledged event survives power loss. A batch is applied
inside one write transaction: load the touched executions, merge, upsert, log the events
(a redelivered event is recognised by its identity and ignored), run the caller's
`before_commit` hook, commit. Because the merge happens inside the write lock, any number of
processes can fold into one database concurrently and still agree. How a batch's rows go
to SQLite in one statement each: `wks.batch_rows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from wks import batch_rows
from wks.batch_rows import LogRows, log_rows, state_row
from wks.errors import StoreError
from wks.events import StreamEntry as Entry
from wks.events import now_ms
from wks.migrations import MIGRATIONS
from wks.state import Fold, State, decode_fold, fold_events, to_state

_CHUNK = 900  # stay under SQLite's bound-parameter limit on old builds
_POINT_PAUSE = 1.0  # seconds without point reads after one failed (see Store._point_read)
# Entries per fold transaction when a backlog allows (the state group's reads, replay pages).
# A commit writes every page the batch dirtied, and with executions spread over the indexes
# that is about one page per execution; the per-execution work (upsert, mirror) also shrinks
# per event as more of an execution's events share a batch. 10,000 entries per commit
# instead of 1,000 raised the fold rate by 75%, 20,000 instead of 10,000 by another 20-27%
# (40,000: no further gain); see `wks bench`. At low rates batches stay small. The costs:
# a longer write lock (~0.3 s), ~35 MiB more resident memory (two batches in hand), and in
# `wks up` event-loop pauses of tens of ms while a full batch is folded, during a backlog.
FOLD_BATCH = 20_000
# The folds a writer keeps after its commits (see Store._fold_cache): at most this many
# executions, and this many bytes of them encoded (a fold holds its execution's data, up to
# 64 KiB an event, so a count alone bounds nothing). Python's objects take a few times their
# encoded size: the cache stays under ~100 MiB however large the folds.
FOLD_CACHE = 10_000
FOLD_CACHE_BYTES = 16 << 20
# A new database's page size: SQLite's usual 4 KiB, set explicitly. Rows are updated at
# random (executions, event_log's identity index), and a COMMIT writes each page it
# touched: with 16 KiB pages the fold of `wks bench` (a small, fresh database whose every
# page a batch touches anyway) ran 20% faster, but against 1,000,000 events over 100,000
# executions, with events for executions at random, p99 at 5,000 events/s went from 50-53
# to 88-102 ms. An existing database keeps the page size it was made with.
PAGE_SIZE = 4096
# How much WAL a commit may leave before it checkpoints (wal_autocheckpoint, counted in
# pages of the database's own size): ~40 MiB rather than SQLite's ~4 MiB, so a hot page is
# written back once, not per commit. The checkpoint stays in the COMMIT that crosses it:
# it lets the next transaction start the WAL over. Without checkpoints the WAL grew, and
# the 20,000 events/s phase of `wks bench` went from 7-11 to 31-36 ms at p50.
CHECKPOINT_BYTES = 40 << 20
_json = msgspec.json.Encoder()




def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit mid-migration)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]



def _merged(
    entries: Sequence[Entry], ids: list[str], folds: dict[str, Fold]
) -> tuple[list[Fold], list[State], list[tuple[Any, ...]]]:
    """The entries' events folded onto the stored folds (in place; an execution without one
    starts empty): the touched folds, their new states and rows, in `ids` order. Folding
    onto the stored fold is the join `combine` computes, without a batch fold per execution
    to join first (~5 us an execution, 8,000 of them in a full batch)."""
    # `StreamEntry.key` spelled out: a workflow event always has the attribute
    fold_events([(e.event, e.event.event_id or e.entry_id) for e in entries], folds)
    touched = [folds[eid] for eid in ids]
    states = [to_state(f) for f in touched]
    return touched, states, [state_row(s, f) for s, f in zip(states, touched, strict=True)]


BeforeCommit = Callable[[list[State]], Awaitable[None]]


def _queued(
    conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any
) -> asyncio.Future[Any]:
    """Run `fn(sqlite3_connection, *args)` on the connection's own thread, in queue order:
    handed over before this returns (its future), so the thread starts on it while the
    event loop goes on with the batch.

    aiosqlite has no public call for this: a hop per statement costs a thread switch and a
    loop wake-up each, which dominated small batches (and so latency). It goes on
    aiosqlite's queue as aiosqlite's own calls do (`_execute`), at once. A task
    would queue `fn` only at the loop's next turn, and yielding a turn for it let the loop
    run whatever else was ready first (the next batch's decoding, a publisher): at 20,000
    events/s that was ~20 ms of a 3,800-event batch's ~145 before SQLite's thread began.
    """
    future = asyncio.get_running_loop().create_future()
    if not conn._running or conn._connection is None:  # aiosqlite's own check
        future.set_exception(ValueError("Connection closed"))
        return future
    conn._tx.put_nowait((future, functools.partial(fn, conn._conn, *args)))
    return future


# What a batch's load found: the database's data_version, the stored folds read, and
# whether those are all of the batch's executions (the cache was out of date) or only the
# ones it did not hold.
Loaded = tuple[int, list[tuple[str, bytes]], bool]


def _load_since(db: sqlite3.Connection, ids: list[str], misses: list[str],
                version: int | None, *, plain: bool = False) -> Loaded:
    """Inside the write transaction: the folds of `misses` when no other connection has
    committed since `version` (the cache holds the rest), else the folds of all `ids`.
    `plain`: without the one-step form (from the event loop's thread)."""
    (now,) = db.execute("PRAGMA data_version").fetchone()
    if now != version:
        return now, _load(db, ids, plain=plain), True
    return now, _load(db, misses, plain=plain) if misses else [], False


def _begin_and_load(db: sqlite3.Connection, ids: list[str], misses: list[str],
                    version: int | None) -> Loaded:
    db.execute("BEGIN IMMEDIATE")
    return _load_since(db, ids, misses, version)


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


# the stored folds of a batch as one row (one step, see wks.batch_rows), the blobs as hex
_LOAD_JSON = """
SELECT json_group_array(json_array(execution_id, hex(fold))) FROM executions
WHERE execution_id IN (SELECT value FROM json_each(?))
"""
_found = msgspec.json.Decoder(list[tuple[str, str]])


def _load(
    db: sqlite3.Connection, ids: list[str], *, plain: bool = False
) -> list[tuple[str, bytes]]:
    """The stored folds of these executions (`plain`: by IN lists only)."""
    # json_each would cut an id at a NUL character (built in code, past the decoder's check)
    # and miss its fold: such a batch is loaded by IN lists
    if (batch_rows.JSON_ROWS and not plain and len(ids) > batch_rows.PLAIN_MAX
            and "\x00" not in "".join(ids)):
        try:
            param = _json.encode(ids).decode()
            (found_json,) = db.execute(_LOAD_JSON, (param,)).fetchone()
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


def _rollback_queued(conn: aiosqlite.Connection) -> asyncio.Future[None]:
    """Roll back whatever is open: queued at once, behind the calls already on the
    connection's thread (first in, first out: it cannot overtake a BEGIN or a write handed
    over before it, and nothing queued later runs inside the failed transaction). It runs
    whether or not anyone waits for it; its error, if any, is retrieved here too."""
    future = _queued(conn, _rollback_open)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


async def _rolled_back(rollback: asyncio.Future[None]) -> None:
    """Wait for a queued rollback; shielded, so a cancelled batch still leaves none open."""
    with contextlib.suppress(ValueError):  # the connection is already closed
        await asyncio.shield(rollback)



class Store:
    """One aiosqlite connection (and, for reads by key, a read-only one: `_point_read`).
    Open one per role: a writer for a consumer, a reader for HTTP."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._point: sqlite3.Connection | None = None  # see _point_read
        self._point_retry_at = 0.0  # monotonic time: no point reads before it
        self._busy_timeout_ms = 30_000
        # a small batch's COMMIT (its fsync) on the event loop's thread too: for a worker's
        # loop, where the other services (backups, retention) work in seconds and the trip
        # to the connection's thread and back cost ~0.7 ms of a ~2 ms publish-to-committed
        # latency at 1,000 events/s. The COMMIT that crosses wal_autocheckpoint then runs
        # the checkpoint there too (tens of ms, every ~40 MiB of log). Off where the HTTP
        # API shares the loop.
        self.commit_small_on_loop = False
        # The folds this connection committed last (within FOLD_CACHE and FOLD_CACHE_BYTES), oldest
        # first, and the database's data_version they are current at. SQLite changes
        # data_version when another connection commits (never for this one's own commits),
        # so a batch whose transaction still sees that version loads only the executions
        # missing here; any other value, or any failure, empties it. At high rates an
        # execution's events span several batches, and reading and decoding its stored fold
        # in each cost ~10-14 us of the ~35-40 it costs per batch.
        self._fold_cache: OrderedDict[str, tuple[Fold, int]] = OrderedDict()  # fold, bytes
        self._fold_bytes = 0
        self._fold_version: int | None = None

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
                store._open_point()
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
        # a new database's page size (SQLite keeps an existing file's own): see PAGE_SIZE
        await conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        # a fold batch dirties pages all over the indexes: a 64 MiB page cache (a bound, not
        # an allocation) keeps them from being re-read (CHECKPOINT_BYTES: why so much WAL)
        await conn.execute("PRAGMA cache_size = -65536")
        async with conn.execute("PRAGMA page_size") as cursor:
            (page_size,) = await cursor.fetchone() or (PAGE_SIZE,)
        await conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_BYTES // page_size}")
        await self._migrate()

    async def close(self) -> None:
        point, self._point = self._point, None
        if point is not None:
            with contextlib.suppress(sqlite3.Error):  # closed from another thread: GC closes it
                point.close()
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
        `logs`: their `log_rows()`, when the caller built them ahead (of this very sequence:
        rows built for another are not used).

        The SQLite work runs in four hops to the connection's thread rather than one per
        statement: begin and load, the event_log insert (the longest, queued right behind the
        load: it needs no merged state), the executions upsert, commit. Meanwhile the event
        loop folds the events onto the loaded state and runs `before_commit` (the Redis
        mirror), so both cores work.
        The writes are known to have succeeded before COMMIT is queued.
        """
        if not entries:
            return []
        if logs is not None and logs.entries is not entries:
            logs = None  # built for other entries (a filtered or split batch): not these rows
        ids = list({e.event.execution_id: None for e in entries})  # first seen first
        if len(entries) <= batch_rows.INLINE_MAX:  # written from the loop's thread
            states = await self._apply_inline(entries, ids, before_commit, logs)
            if states is not None:
                return states
        conn = self._conn
        loading: asyncio.Future[Loaded] | None = None
        logging: asyncio.Future[None] | None = None
        write: asyncio.Future[None] | None = None
        try:
            try:
                # SQLite's thread gets its work as soon as it can start on it: the load, then
                # the event_log insert (it needs no merged state; if BEGIN failed it refuses
                # to run), which it works on while this thread folds onto what was loaded
                loading = _queued(conn, _begin_and_load, *self._misses(ids))
                logging = _queued(
                    conn, batch_rows.write_log, log_rows(entries) if logs is None else logs)
                await asyncio.wait([loading])
                loaded = loading.result()  # raises if BEGIN failed
                touched, states, rows = _merged(entries, ids, self._folds(ids, loaded))
                write = _queued(conn, batch_rows.write_states, rows)
                if before_commit is not None:
                    await before_commit(states)
                await logging
                await write
                await conn.execute("COMMIT")
            except BaseException:
                self._forget_folds()
                # the ROLLBACK is queued before anything is awaited: a second cancellation
                # below must not leave the transaction (and the write lock) open
                rollback = _rollback_queued(conn)
                # let this batch's own calls finish first (a cancelled wait does not stop a
                # BEGIN or a write already handed to the connection's thread)
                for step in (loading, logging, write):
                    if step is not None and not step.done():
                        await asyncio.wait([step])
                    if step is not None and not step.cancelled():
                        step.exception()  # retrieved: the error that matters is being raised
                await _rolled_back(rollback)
                raise
        except sqlite3.Error as exc:
            raise StoreError("apply batch", str(self.path), exc) from exc
        except ValueError as exc:
            if not self._closed():
                raise
            raise StoreError("apply batch", str(self.path), exc) from exc
        self._keep_folds(touched, rows, loaded[0])
        return states

    def _closed(self) -> bool:
        """Is the connection closed? aiosqlite says so with a ValueError, which for a batch
        must be the store's failure, to retry (a shutdown past its grace closed it), not
        the entries' (a consumer dead-letters entries whose apply fails alone)."""
        return self._conn._connection is None or not self._conn._running

    def _misses(self, ids: list[str]) -> tuple[list[str], list[str], int | None]:
        """`_load_since`'s arguments for a batch of these executions."""
        cache = self._fold_cache
        return ids, [eid for eid in ids if eid not in cache], self._fold_version

    def _folds(self, ids: list[str], loaded: Loaded) -> dict[str, Fold]:
        """The batch's stored folds: those loaded, and the cache's for the rest."""
        _, found, whole = loaded
        folds = {eid: decode_fold(blob) for eid, blob in found}
        if whole:
            self._forget_folds()
            return folds
        cache = self._fold_cache
        for eid in ids:
            if eid not in folds and eid in cache:
                # taken out: folded in place from here on, and back in only once committed
                fold, size = cache.pop(eid)
                self._fold_bytes -= size
                folds[eid] = fold
        return folds

    def _keep_folds(self, touched: list[Fold], rows: list[tuple[Any, ...]],
                    version: int) -> None:
        """After a commit: the committed folds (`rows` hold them encoded, for their size),
        the most recent last, current at `version`; the oldest leave past either bound."""
        cache = self._fold_cache
        # none of them is in the cache (`_folds` took them out), and of a batch larger than
        # the cache only the last FOLD_CACHE could stay
        for fold, row in zip(touched[-FOLD_CACHE:], rows[-FOLD_CACHE:], strict=True):
            size = len(row[-1])
            if size <= FOLD_CACHE_BYTES // 256:  # one huge fold does not empty the rest
                cache[fold.execution_id] = (fold, size)
                self._fold_bytes += size
        while cache and (len(cache) > FOLD_CACHE or self._fold_bytes > FOLD_CACHE_BYTES):
            _, (_, size) = cache.popitem(last=False)
            self._fold_bytes -= size
        self._fold_version = version

    def _forget_folds(self) -> None:
        """A batch failed: its folds were changed in place, and may not have been committed."""
        self._fold_cache.clear()
        self._fold_bytes = 0
        self._fold_version = None

    async def _apply_inline(
        self, entries: Sequence[Entry], ids: list[str], before_commit: BeforeCommit | None,
        logs: LogRows | None,
    ) -> list[State] | None:
        """A small batch: begin, load and write straight from the event loop's thread.

        At low and middling rates batches hold a few entries to a few hundred, whose SQLite
        work (~0.2 ms to a few ms, row by row: `batch_rows.INLINE_MAX`) costs less than the
        trips to the connection's thread (~0.5 ms each on a busy loop: the GIL hand-over)
        and the one-step statements those trips need, and latency is what matters there.
        The loop never waits for the write lock (None when another process holds it: the
        caller takes the threaded path, which waits up to the busy timeout); it waits for
        the disk only with `commit_small_on_loop` (otherwise COMMIT, the fsync, runs on the
        connection's thread). Nothing else is queued on this connection meanwhile: the
        consumer that owns it applies one batch at a time.
        """
        conn = self._conn
        try:
            db: sqlite3.Connection = conn._conn  # aiosqlite's, opened for any thread
            if not _begin_now(db, self._busy_timeout_ms):
                return None
            try:
                loaded = _load_since(db, *self._misses(ids), plain=True)
                if logs is None:
                    logs = log_rows(entries)
                touched, states, rows = _merged(entries, ids, self._folds(ids, loaded))
                batch_rows.write_batch(db, rows, logs)
                if before_commit is not None:
                    await before_commit(states)
                if self.commit_small_on_loop:
                    db.execute("COMMIT")
                else:
                    await conn.execute("COMMIT")
            except BaseException:
                self._forget_folds()
                await _rolled_back(_rollback_queued(conn))
                raise
        except sqlite3.Error as exc:
            raise StoreError("apply batch", str(self.path), exc) from exc
        except ValueError as exc:
            if not self._closed():
                raise
            raise StoreError("apply batch", str(self.path), exc) from exc
        self._keep_folds(touched, rows, loaded[0])
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

    def _open_point(self) -> None:
        """Open `_point_read`'s connection, at start-up beside aiosqlite's so that both read
        the same file (a path resolved later could name a file put there since)."""
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None)
            db.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error:
            self._point_retry_at = time.monotonic() + _POINT_PAUSE
            return
        self._point = db

    def _point_read(self, sql: str, params: tuple[Any, ...]) -> list[Any] | None:
        """A read by key, on the event loop's thread; None: it could not, take the trip.

        The API's hot reads are B-tree lookups of a few pages (~20 us), and the trip to the
        connection's thread and back (its queue, GIL hand-overs between the threads, the
        loop's wake-up) cost more than the read: with it, a `wks api` process served 1,200-
        2,000 state reads/s; without, 2,200-3,200 (the bench's reads, alternating runs).
        A connection of its own, read-only and used only from the thread that opened it, so
        nothing races aiosqlite's. It never waits for a lock: a WAL reader seldom must, and
        then the trip's connection waits instead. Any error also takes the trip, which
        raises it as the store's other reads do, and drops this connection: a new one is
        opened on the first read after a pause, so one that broke (closed, used from
        another thread, an I/O error) does not cost every read a failed try.
        """
        db = self._point
        if db is None:
            if time.monotonic() < self._point_retry_at:
                return None
            self._open_point()
            db = self._point
            if db is None:
                return None
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.Error:
            self._point = None
            self._point_retry_at = time.monotonic() + _POINT_PAUSE
            with contextlib.suppress(sqlite3.Error):  # another thread's: GC closes it
                db.close()
            return None

    async def _read_by_key(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        rows = self._point_read(sql, params)
        return rows if rows is not None else await self.fetchall(sql, params)

    async def get_fold(self, execution_id: str) -> Fold | None:
        rows = await self._read_by_key(
            "SELECT fold FROM executions WHERE execution_id = ?", (execution_id,))
        return decode_fold(rows[0][0]) if rows else None

    async def get_state(self, execution_id: str) -> State | None:
        fold = await self.get_fold(execution_id)
        return to_state(fold) if fold is not None else None

    async def entry_applied(self, entry_id: str) -> bool:
        """Has this stream entry's event been committed (directly or as a resend)?"""
        rows = await self._read_by_key(
            "SELECT EXISTS (SELECT 1 FROM event_log WHERE entry_id = ?)"
            " OR EXISTS (SELECT 1 FROM event_alias WHERE entry_id = ?)",
            (entry_id, entry_id),
        )
        return bool(rows[0][0])

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
