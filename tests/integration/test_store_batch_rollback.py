"""The store stays usable: a failed or cancelled batch changes nothing, and concurrent opens
of a new file all succeed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.helpers import wait_for
from wks import batch_rows
from wks.errors import StoreError
from wks.events import StreamEntry, WorkflowStarted, encode
from wks.state import State
from wks.store import Store, _queued


def _entries(n: int = 1) -> list[StreamEntry]:
    out = []
    for i in range(n):
        ev = WorkflowStarted(execution_id=f"x-{i % 7}", workflow_id="wf", total_steps=2, ts=1,
                             event_id=f"e{i}")
        out.append(StreamEntry(f"{i + 1}-0", ev, encode(ev)))
    return out


# small batches are written from the loop's thread, large ones on the connection's thread
SIZES = pytest.mark.parametrize("size", [1, batch_rows.INLINE_MAX + 1], ids=["inline", "threaded"])


@SIZES
async def test_failing_before_commit_rolls_back(tmp_path: Path, size: int) -> None:
    """When the mirror hook raises, nothing is stored and the next batch applies."""
    async with await Store.open(tmp_path / "s.db") as store:

        async def mirror_down(states: list[State]) -> None:
            raise ConnectionError("mirror down")

        with pytest.raises(ConnectionError):
            await store.apply_batch(_entries(size), before_commit=mirror_down)
        assert not store.conn.in_transaction
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == 0
        await store.apply_batch(_entries(size))
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == size


@SIZES
@pytest.mark.parametrize("rolled_back", [False, True], ids=["raised", "sqlite-rolled-back"])
async def test_a_failing_write_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, rolled_back: bool
) -> None:
    """The event_log insert fails, also after SQLite has rolled the transaction back itself
    (disk full, I/O error): the upsert queued behind it must not commit on its own."""
    real_log = batch_rows.write_log

    def failing_log(db: sqlite3.Connection, logs: object) -> None:
        real_log(db, logs)  # type: ignore[arg-type]
        if rolled_back:
            db.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    async with await Store.open(tmp_path / "s.db") as store:
        monkeypatch.setattr(batch_rows, "write_log", failing_log)
        with pytest.raises(StoreError):
            await store.apply_batch(_entries(size))
        await wait_for(lambda: not store.conn.in_transaction, 5, "the rollback")
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == 0
        assert await store.scalar("SELECT COUNT(*) FROM executions") == 0
        monkeypatch.setattr(batch_rows, "write_log", real_log)
        await store.apply_batch(_entries(size))
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == size


@SIZES
async def test_batch_waits_for_another_writer_without_blocking_the_loop(
    tmp_path: Path, size: int
) -> None:
    """Another process holding the write lock: the batch waits for it (busy timeout) on the
    connection's thread while the event loop keeps serving other tasks, then commits."""
    path = tmp_path / "s.db"
    # a loop blocked on the lock would stall for the whole busy timeout and fail wait_for
    async with await Store.open(path, busy_timeout_ms=60_000) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(store.apply_batch(_entries(size)))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(ticker())
        try:
            await wait_for(lambda: ticks >= 20, 10, "the loop running while the batch waits")
            assert not task.done()
            other.execute("COMMIT")  # the lock is free: the batch goes ahead
            states = await asyncio.wait_for(task, 10)
        finally:
            beat.cancel()
            other.close()
        assert len(states) == min(size, 7)
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == size


@SIZES
async def test_cancelled_batch_leaves_no_open_transaction(tmp_path: Path, size: int) -> None:
    """A batch cancelled at its first await is rolled back behind it."""
    async with await Store.open(tmp_path / "s.db") as store:
        task = asyncio.create_task(store.apply_batch(_entries(size)))
        await asyncio.sleep(0)  # let it queue BEGIN on the connection's thread
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await wait_for(lambda: not store.conn.in_transaction, 5, "the rollback")
        await store.apply_batch(_entries())
        assert await store.scalar("SELECT COUNT(*) FROM executions") == 1


async def test_batch_cancelled_twice_still_rolls_back(tmp_path: Path) -> None:
    """Cancelled again while its error path waits for its own steps, a threaded batch still
    leaves no transaction (and no write lock) behind once those steps have run."""
    async with await Store.open(tmp_path / "s.db") as store:
        gate = threading.Event()
        # hold SQLite's thread, so the batch's BEGIN and writes wait in its queue
        held = _queued(store.conn, lambda db: gate.wait(10))
        task = asyncio.create_task(store.apply_batch(_entries(batch_rows.INLINE_MAX + 1)))
        await asyncio.sleep(0.05)  # it queued its steps and waits for the load
        task.cancel()  # its error path now waits for the queued BEGIN and load
        await asyncio.sleep(0.05)
        task.cancel()  # and is cancelled again while it waits
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gate.set()
        await held
        # everything queued by the batch has run when a call queued after it returns
        assert await _queued(store.conn, lambda db: db.in_transaction) is False
        await store.apply_batch(_entries())
        assert await store.scalar("SELECT COUNT(*) FROM executions") == 1


async def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Three connections opening (and migrating) the same new file at once all get a store,
    instead of one failing with 'database is locked' (seen when workers start together)."""
    for round_ in range(10):
        path = tmp_path / f"new-{round_}.db"
        stores = await asyncio.gather(*(Store.open(path) for _ in range(3)))
        versions = [await s.schema_version() for s in stores]
        for s in stores:
            await s.close()
        assert len(set(versions)) == 1
        assert versions[0] >= 1


@SIZES
async def test_a_batch_on_a_closed_store_is_a_store_error(tmp_path: Path, size: int) -> None:
    """A store closed under a consumer (a shutdown past its grace) fails the batch as the
    store's error, which consumers retry, never as the entries' own (dead-lettered)."""
    store = await Store.open(tmp_path / "s.db")
    await store.close()
    with pytest.raises(StoreError, match="apply batch"):
        await store.apply_batch(_entries(size))
