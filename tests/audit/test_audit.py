"""`wks audit`: an execution's events in stream order, and which ones changed its state."""

from __future__ import annotations

import json
import sqlite3

import redis.asyncio as aioredis

from tests.audit.conftest import Cli, add, fold
from wks.config import Settings


async def history(r: aioredis.Redis, settings: Settings) -> list[str]:
    """started, progress, an older progress that changes nothing, a resend, completed."""
    x = {"executionId": "job-1"}
    return [
        await add(r, settings, {**x, "type": "workflow.started", "workflowId": "etl",
                                "totalSteps": 2, "ts": 1000, "eventId": "e1"}, "5000-0"),
        await add(r, settings, {**x, "type": "workflow.progress", "completedSteps": 1,
                                "currentStep": "load", "ts": 2000, "eventId": "e2"}, "5000-1"),
        await add(r, settings, {**x, "type": "workflow.progress", "completedSteps": 1,
                                "ts": 1500, "eventId": "e3"}, "6000-0"),
        await add(r, settings, {**x, "type": "workflow.progress", "completedSteps": 1,
                                "currentStep": "load", "ts": 2000, "eventId": "e2"}, "6000-1"),
        await add(r, settings, {"type": "workflow.started", "executionId": "other",
                                "workflowId": "etl", "totalSteps": 1, "ts": 1000}, "6500-0"),
        await add(r, settings, {**x, "type": "workflow.completed", "ts": 3000,
                                "data": {"rows": 7}}, "7000-0"),
    ]


async def test_events_in_stream_order_with_changed_flags(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """JSON lines: entry ids in stream order, the resend logged once, no-op events unchanged."""
    await history(r, settings)
    await fold(settings, r)
    code, out, _ = await wks("audit", "job-1", "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["entryId"] for row in rows] == ["5000-0", "5000-1", "6000-0", "7000-0"]
    assert [row["changed"] for row in rows] == [True, True, False, True]
    assert rows[1]["fields"] == ["completedSteps", "currentStep", "estimatedCompletion",
                                 "progress", "updatedAt"]
    assert rows[3]["fields"] == ["completedSteps", "data", "estimatedCompletion", "progress",
                                 "status", "updatedAt"]
    assert rows[3]["event"]["data"] == {"rows": 7}
    assert rows[0]["type"] == "workflow.started"


async def test_table_says_whether_the_log_folds_to_the_live_state(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """The table lists each event; its footer compares the refold with the live row."""
    await history(r, settings)
    await fold(settings, r)
    code, out, _ = await wks("audit", "job-1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "execution job-1: 4 events"
    assert lines[1].split() == ["ENTRY", "ID", "TYPE", "TS", "(UTC)", "EVENT", "ID", "CHANGED",
                                "FIELDS"]
    assert lines[4].split()[:5] == ["6000-0", "workflow.progress", "1970-01-01T00:00:01.500Z",
                                    "e3", "no"]
    assert lines[-1] == "the logged events fold to the live state"

    with sqlite3.connect(settings.db_path) as conn:  # columns edited by hand, fold untouched
        conn.execute("UPDATE executions SET status = 'failed', progress = 3"
                     " WHERE execution_id = 'job-1'")
    code, out, _ = await wks("audit", "job-1")
    assert out.splitlines()[-1] == (
        "the logged events fold to the live state, but the row's columns differ from it"
        " (progress, status): the row was changed outside wks")
    assert code == 1

    with sqlite3.connect(settings.db_path) as conn:
        conn.execute("UPDATE executions SET fold = (SELECT fold FROM executions"
                     " WHERE execution_id = 'other') WHERE execution_id = 'job-1'")
    code, out, _ = await wks("audit", "job-1")
    assert "do NOT fold to the live state" in out
    assert code == 1

    code, _, err = await wks("audit", "nobody")
    assert code == 1
    assert "execution 'nobody' not found" in err
