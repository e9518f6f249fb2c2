"""`wks emit` as a shell user runs it: what it publishes, and what it refuses in one line."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from wks import events as ev
from wks.config import Settings

ROOT = Path(__file__).resolve().parents[2]


async def emit(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WKS_")}
    env.update({"WKS_REDIS_URL": str(settings.redis_url), "WKS_PREFIX": settings.prefix,
                "WKS_VAR_DIR": str(settings.var_dir), "WKS_LOG_FORMAT": "json",
                "PYTHONPATH": str(ROOT)})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli", "emit", *args, env=env, cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_publishes_the_event_and_prints_its_entry_id(
    settings: Settings, r: aioredis.Redis
) -> None:
    """Every option that belongs to the type is on the wire, `data` as given."""
    code, out, err = await emit(
        settings, "workflow.started", "--execution-id", "cli-1", "--workflow-id", "wf",
        "--total-steps", "3", "--owner", "ann", "--event-id", "e-1", "--ts", "5",
        "--data", '{"rows": 18446744073709551615, "ratio": 0.5, "tags": ["a"]}')
    assert code == 0, err
    [(entry_id, fields)] = await r.xrange(settings.keys.workflow_stream)
    assert out.strip() == entry_id.decode()
    assert ev.decode_workflow(fields[b"event"]) == ev.WorkflowStarted(
        execution_id="cli-1", workflow_id="wf", total_steps=3, owner="ann", event_id="e-1",
        ts=5, data={"rows": 18446744073709551615, "ratio": 0.5, "tags": ["a"]})


@pytest.mark.parametrize(("data", "reason"), [
    ('{"f": NaN}', "not JSON"),
    ('{"f": Infinity}', "not JSON"),
    ('{"f": -Infinity}', "not JSON"),
    ('{"f": 1e400}', "out of range"),
    ('{"f": -1e400}', "out of range"),
    ("[1, 2]", "must be a JSON object, not an array"),
    ('"text"', "must be a JSON object, not a string"),
    ("3", "must be a JSON object, not a number"),
    ("null", "must be a JSON object, not null"),
    ("{'f': 1}", "not JSON"),
])
async def test_data_must_be_a_strict_json_object(
    settings: Settings, r: aioredis.Redis, data: str, reason: str
) -> None:
    """NaN, Infinity and numbers a double cannot hold are not JSON: refused in one line
    (they used to go out as null), and so is anything but an object."""
    code, out, err = await emit(
        settings, "workflow.completed", "--execution-id", "cli-2", "--data", data)
    assert code != 0
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("wks emit: --data")
    assert reason in line
    assert await r.xlen(settings.keys.workflow_stream) == 0


@pytest.mark.parametrize(("event_type", "option", "value"), [
    ("workflow.progress", "--owner", "ann"),
    ("workflow.progress", "--workflow-id", "wf"),
    ("workflow.progress", "--total-steps", "3"),
    ("workflow.failed", "--reason", "why"),
    ("workflow.failed", "--total-steps", "3"),
    ("workflow.failed", "--data", "{}"),
    ("workflow.cancelled", "--error", "boom"),
    ("workflow.completed", "--current-step", "s"),
    ("workflow.started", "--completed-steps", "1"),
])
async def test_an_option_the_type_has_no_key_for_is_refused(
    settings: Settings, r: aioredis.Redis, event_type: str, option: str, value: str
) -> None:
    """An option the type does not carry is not silently dropped: one line names it and the
    type, the exit code is 2 and nothing is published."""
    required = {"workflow.started": ["--workflow-id", "wf", "--total-steps", "1"],
                "workflow.progress": ["--completed-steps", "1"],
                "workflow.failed": ["--error", "boom"]}.get(event_type, [])
    code, out, err = await emit(
        settings, event_type, "--execution-id", "cli-3", *required, option, value)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [f"wks emit: {option} does not apply to {event_type}"]
    assert await r.xlen(settings.keys.workflow_stream) == 0
