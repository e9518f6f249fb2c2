"""Reads by key on the event loop's thread (`Store._point_read`): fresh, equal, and a way back
to the connection's thread whenever they cannot run."""

from __future__ import annotations

from pathlib import Path

from wks import events as ev
from wks.events import StreamEntry, encode
from wks.store import Store


def _entry(entry_id: str, event: ev.WorkflowEvent) -> StreamEntry:
    return StreamEntry(entry_id, event, encode(event))


async def test_reads_by_key_see_each_commit_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await Store.open(path) as writer, await Store.open(path) as reader:
        assert await reader.get_state("x") is None
        assert not await reader.entry_applied("1-0")
        assert reader._point is not None  # the loop thread's connection answered
        await writer.apply_batch([_entry("1-0", ev.WorkflowStarted(
            execution_id="x", workflow_id="wf", total_steps=4, ts=1))])
        state = await reader.get_state("x")
        assert state is not None
        assert (state.status, state.progress) == ("running", 0)
        assert await reader.entry_applied("1-0")
        await writer.apply_batch([_entry("2-0", ev.WorkflowProgress(
            execution_id="x", completed_steps=2, ts=2))])
        state = await reader.get_state("x")
        assert state is not None
        assert state.progress == 50  # no snapshot held over from the read before
        assert state == await writer.get_state("x")


async def test_a_read_that_cannot_run_on_the_loop_takes_the_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await Store.open(path) as store:
        await store.apply_batch([_entry("1-0", ev.WorkflowCompleted(execution_id="y", ts=3))])
        assert await store.get_state("y") is not None
        point = store._point
        assert point is not None
        point.close()  # every use of it now raises
        state = await store.get_state("y")  # answered by the aiosqlite connection
        assert state is not None
        assert state.status == "completed"
        assert store._point is None  # the broken one is dropped, not tried on every read
        assert await store.entry_applied("1-0")
        assert store._point is None  # during the pause
        store._point_retry_at = 0.0  # the pause is over
        assert await store.entry_applied("1-0")
        assert store._point is not None  # opened again
    assert store._point is None  # closed with the store
