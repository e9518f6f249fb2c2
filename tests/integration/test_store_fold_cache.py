"""A writer folds onto the folds it committed last only while no other connection has
committed since, keeps a bounded number of them, and keeps none from a failed batch."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.workload import workload
from wks import store as store_module
from wks.batch_rows import INLINE_MAX
from wks.events import StreamEntry, WorkflowEvent, WorkflowProgress, WorkflowStarted, encode
from wks.state import State, fold_events, to_state
from wks.store import Store

_seq = iter(range(1, 10**9))


def _batch(*events: WorkflowEvent, pad: int = 0) -> list[StreamEntry]:
    """`events` as entries, and `pad` events of other executions (a larger batch takes the
    connection's thread, a small one is written from the loop's)."""
    filler = [WorkflowStarted(execution_id=f"pad-{next(_seq)}", workflow_id="wf",
                              total_steps=1, ts=1) for _ in range(pad)]
    return [StreamEntry(f"{next(_seq)}-0", e, encode(e)) for e in (*events, *filler)]


SIZES = pytest.mark.parametrize("pad", [0, INLINE_MAX], ids=["inline", "threaded"])


@SIZES
async def test_a_commit_by_another_connection_is_folded_onto(tmp_path: Path, pad: int) -> None:
    """Two writers take turns on one execution: each batch merges onto what the other
    committed, not onto the fold it kept from its own last batch."""
    path = tmp_path / "s.db"
    async with await Store.open(path) as a, await Store.open(path) as b:
        await a.apply_batch(_batch(WorkflowStarted(
            execution_id="x", workflow_id="wf", total_steps=10, ts=1, data={"a": 1}), pad=pad))
        await b.apply_batch(_batch(WorkflowProgress(
            execution_id="x", completed_steps=7, ts=2, data={"b": 2}), pad=pad))
        await a.apply_batch(_batch(WorkflowProgress(
            execution_id="x", completed_steps=3, ts=3, data={"c": 3}), pad=pad))
        state = await b.get_state("x")
    assert state is not None
    assert state.completed_steps == 7
    assert state.data == {"a": 1, "b": 2, "c": 3}


@SIZES
async def test_a_failed_batch_leaves_nothing_to_fold_onto(tmp_path: Path, pad: int) -> None:
    """A batch rolled back after its folds were changed: the next batch folds onto the
    committed fold, without the rolled-back event."""
    async with await Store.open(tmp_path / "s.db") as store:
        await store.apply_batch(_batch(WorkflowStarted(
            execution_id="x", workflow_id="wf", total_steps=10, ts=1), pad=pad))

        async def mirror_down(states: list[State]) -> None:
            raise ConnectionError("mirror down")

        with pytest.raises(ConnectionError):
            await store.apply_batch(_batch(WorkflowProgress(
                execution_id="x", completed_steps=9, ts=5, data={"lost": True}), pad=pad),
                before_commit=mirror_down)
        states = await store.apply_batch(_batch(WorkflowProgress(
            execution_id="x", completed_steps=2, ts=3), pad=pad))
    mine = next(s for s in states if s.execution_id == "x")
    assert (mine.completed_steps, mine.data, mine.updated_at) == (2, {}, 3)


async def test_many_executions_over_a_small_cache_fold_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More executions than the cache holds, in batches of both paths: the cache stays
    within its bound and every stored state is the fold of all the events."""
    monkeypatch.setattr(store_module, "FOLD_CACHE", 40)
    rnd = random.Random(5)
    events = workload(3000, 300, rnd)
    rnd.shuffle(events)
    entries = [StreamEntry(f"{i + 1}-0", e, encode(e)) for i, e in enumerate(events)]
    async with await Store.open(tmp_path / "s.db") as store:
        at = 0
        while at < len(entries):
            size = rnd.choice([1, 3, 30, 200, 700])
            await store.apply_batch(entries[at:at + size])
            at += size
            assert len(store._fold_cache) <= 40
        stored = {s.execution_id: s async for s in _states(store)}
    expected = fold_events((e.event, e.key) for e in entries)
    assert stored == {eid: to_state(f) for eid, f in expected.items()}


async def _states(store: Store):  # type: ignore[no-untyped-def]
    async for fold in store.iter_folds():
        yield to_state(fold)


async def test_the_cache_is_bounded_by_bytes_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folds carrying big data fill the byte bound before the count: the cache keeps what
    fits, oldest out first, and a fold over a 256th of the bound is not kept at all."""
    monkeypatch.setattr(store_module, "FOLD_CACHE_BYTES", 256 * 1024)
    big = "x" * 600  # ~0.7 KiB encoded per fold
    async with await Store.open(tmp_path / "s.db") as store:
        for n in range(4):
            await store.apply_batch(_batch(*(
                WorkflowStarted(execution_id=f"big-{n}-{i}", workflow_id="wf", total_steps=1,
                                ts=1, data={"blob": big}) for i in range(200))))
            sizes = [size for _, size in store._fold_cache.values()]
            assert store._fold_bytes == sum(sizes) <= 256 * 1024
        assert 200 < len(store._fold_cache) < 800  # bytes, not the count of 10,000, bound it
        assert "big-3-199" in store._fold_cache
        assert "big-0-0" not in store._fold_cache
        await store.apply_batch(_batch(WorkflowStarted(
            execution_id="huge", workflow_id="wf", total_steps=1, ts=1,
            data={"blob": "y" * 2000})))
        assert "huge" not in store._fold_cache
        state = await store.get_state("huge")
    assert state is not None
    assert state.data == {"blob": "y" * 2000}
