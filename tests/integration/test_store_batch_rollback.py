"""The store stays usable: a failed or cancelled batch changes nothing, and concurrent opens
of a new file all succeed."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.helpers import wait_for
from wks.events import StreamEntry, WorkflowStarted, encode
from wks.state import State
from wks.store import Store


def _entries() -> list[StreamEntry]:
    ev = WorkflowStarted(execution_id="x-1", workflow_id="wf", total_steps=2, ts=1, event_id="e1")
    return [StreamEntry("1-0", ev, encode(ev))]


async def test_failing_before_commit_rolls_back(tmp_path: Path) -> None:
    """When the mirror hook raises, nothing is stored and the next batch applies."""
    async with await Store.open(tmp_path / "s.db") as store:

        async def mirror_down(states: list[State]) -> None:
            raise ConnectionError("mirror down")

        with pytest.raises(ConnectionError):
            await store.apply_batch(_entries(), before_commit=mirror_down)
        assert not store.conn.in_transaction
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == 0
        await store.apply_batch(_entries())
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == 1


async def test_cancelled_batch_leaves_no_open_transaction(tmp_path: Path) -> None:
    """A batch cancelled right after queuing its BEGIN is rolled back behind it."""
    async with await Store.open(tmp_path / "s.db") as store:
        task = asyncio.create_task(store.apply_batch(_entries()))
        await asyncio.sleep(0)  # let it queue BEGIN on the connection's thread
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await wait_for(lambda: not store.conn.in_transaction, 5, "the rollback")
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
