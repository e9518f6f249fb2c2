"""`wks bench --history`: the latency phases' files hold a history first, and their events go
to its executions at random, in both the real consumer's file and the naive ruler's."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from producers.loadgen import plan
from wks.cli.bench_phases import Bench, _onto, history_phase
from wks.config import Settings
from wks.store import Store


async def test_history_fills_both_files_and_events_go_to_its_executions(
    settings: Settings, r: Any, tmp_path: Path
) -> None:
    b = Bench(settings, r, tmp_path, run="hb")
    out = await history_phase(b, 1_000)
    assert (out["history_events"], out["history_executions"]) == (1_000, 100)
    assert len(b.history) == len(set(b.history)) == 100
    async with await Store.open(tmp_path / "state.db") as store:
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == 1_000
        folded = {row[0] for row in await store.fetchall("SELECT execution_id FROM executions")}
    assert folded == set(b.history)
    with sqlite3.connect(tmp_path / "naive-latency.db") as naive:
        assert naive.execute("SELECT COUNT(*) FROM log").fetchone() == (1_000,)
        assert {row[0] for row in naive.execute("SELECT execution_id FROM state")} == folded

    events = list(plan(300, 30, seed=2, run="hb-latency500"))
    sent = _onto(events, b.history, seed=500)
    assert len(sent) == len(events)
    # each planned execution goes to one history execution of its own, events otherwise kept
    onto = {e.execution_id: s.execution_id for e, s in zip(events, sent, strict=True)}
    assert set(onto.values()) <= folded
    assert len(set(onto.values())) == len(onto) == 30
    assert [s.event_id for s in sent] == [e.event_id for e in events]
    assert [type(s) for s in sent] == [type(e) for e in events]
    # the ruler's phase at the same rate gets the same executions
    assert _onto(events, b.history, seed=500) == sent
