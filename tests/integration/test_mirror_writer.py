"""The mirror written by one Lua call equals the one written by the MULTI pipeline fallback."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from consumers.mirror import _CHUNK, MirrorWriter
from tests.workload import workload
from wks.keys import Keys
from wks.redis import client
from wks.state import TERMINAL, fold_events, mirror_fields, to_state


async def _snapshot(r: aioredis.Redis, keys: Keys, ids: list[str]) -> dict[str, object]:
    out: dict[str, object] = {"active": sorted(await r.smembers(keys.active))}
    for xid in ids:
        key = keys.workflow(xid)
        out[xid] = (await r.hgetall(key), await r.pttl(key) > 0)
    return out


async def test_script_and_pipeline_write_the_same_mirror(r: aioredis.Redis, prefix: str) -> None:
    """Hashes, TTLs on terminal states and the active set agree between the two modes,
    also when a second batch overwrites states written by the first."""
    events = workload(600, 60, random.Random(3))
    folds = fold_events([(e, e.event_id or f"0-{i}") for i, e in enumerate(events)])
    states = [to_state(f) for f in folds.values()]
    assert {s.status for s in states} & TERMINAL
    assert {s.status for s in states} - TERMINAL

    script_keys, pipe_keys = Keys(f"{prefix}:s"), Keys(f"{prefix}:p")
    script = MirrorWriter(r, script_keys, 60_000)
    pipeline = MirrorWriter(r, pipe_keys, 60_000)
    pipeline.mode = "pipeline"
    # a first, stale write of every execution as running, then the real states
    stale = [s.__class__(**{**{f: getattr(s, f) for f in s.__struct_fields__},
                            "status": "running"}) for s in states]
    for writer in (script, pipeline):
        await writer.write(stale)
        await writer.write(states)
    assert script.mode == "script"

    ids = [s.execution_id for s in states]
    got_script = await _snapshot(r, script_keys, ids)
    got_pipe = await _snapshot(r, pipe_keys, ids)
    assert got_script == got_pipe
    first = states[0]
    fields, _ = got_script[first.execution_id]  # type: ignore[misc]
    assert fields == {k.encode(): v.encode() for k, v in mirror_fields(first).items()}


@pytest.mark.parametrize("make", [aioredis.Redis.from_url, client], ids=["redis-py", "lean"])
async def test_a_batch_of_many_chunks_after_a_script_flush(
    redis_factory: object, prefix: str, make: Callable[[str], aioredis.Redis]
) -> None:
    """A batch over several script calls (sent at once: in one pipeline, or on the lean
    connection) is written whole, also when Redis no longer knows the script (restarted
    empty, SCRIPT FLUSH): loaded, then sent again."""
    server = redis_factory(appendonly=False)  # type: ignore[operator]
    r = make(server.url)
    try:
        events = workload(3000, 1200, random.Random(4))
        folds = fold_events([(e, e.event_id or f"0-{i}") for i, e in enumerate(events)])
        states = [to_state(f) for f in folds.values()]
        assert len(states) > 2 * _CHUNK
        script_keys, pipe_keys = Keys(f"{prefix}:s"), Keys(f"{prefix}:p")
        script = MirrorWriter(r, script_keys, 60_000)
        pipeline = MirrorWriter(r, pipe_keys, 60_000)
        pipeline.mode = "pipeline"
        await script.write(states[:1])  # one call: the script is loaded
        await r.script_flush()  # as after a restart with no data: NOSCRIPT from here on
        await script.write(states)
        await pipeline.write(states)
        assert script.mode == "script"
        assert await r.script_exists(script._script.sha) == [True]
        ids = [s.execution_id for s in states]
        assert await _snapshot(r, script_keys, ids) == await _snapshot(r, pipe_keys, ids)
        assert await r.scard(script_keys.active) + sum(
            s.status in TERMINAL for s in states) == len(states)
    finally:
        await r.aclose()
