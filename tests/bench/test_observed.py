"""The bench's pass-through handler keeps the state consumer's own calling convention."""

from __future__ import annotations

from typing import Any

from consumers.state import StateHandler
from wks import events as ev
from wks.cli.bench_phases import Observed
from wks.config import Settings
from wks.events import StreamEntry, encode
from wks.store import Store


async def test_a_batch_applied_without_prepared_rows_folds(settings: Settings, r: Any) -> None:
    """A failing batch is isolated by applying its parts with the entries alone
    (wks.isolate): through the bench's handler they must fold as through the real one."""
    events = [ev.WorkflowStarted(execution_id="b1", workflow_id="w", total_steps=2, ts=1),
              ev.WorkflowProgress(execution_id="b1", completed_steps=1, ts=2)]
    entries = [StreamEntry(f"{i + 1}-0", e, encode(e)) for i, e in enumerate(events)]
    seen: list[int] = []
    async with await Store.open(settings.db_path) as store:
        handler = Observed(StateHandler(store, r, settings.keys, 3600.0),
                           lambda items, at: seen.append(len(items)))
        await handler.apply(entries)
        assert seen == [2]
        assert await store.scalar(
            "SELECT completed_steps FROM executions WHERE execution_id = 'b1'") == 1
