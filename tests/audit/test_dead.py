"""`wks dead`: list, show, fix and replay, purge dead letters."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from tests.audit.conftest import Cli, add, fold
from wks.config import Settings
from wks.store import Store

BROKEN = {"type": "workflow.started", "executionId": "job-7", "workflowId": "etl", "ts": 5}


async def dead_ids(r: aioredis.Redis, settings: Settings) -> list[str]:
    return [m.decode() for m, _ in await r.xrange(settings.keys.dead_stream)]


async def test_a_fixed_dead_letter_replayed_is_folded(
    r: aioredis.Redis, settings: Settings, wks: Cli, tmp_path
) -> None:
    """A bad event is listed and shown; its fixed payload is re-published and folded."""
    source = await add(r, settings, BROKEN)  # no totalSteps: invalid
    await fold(settings, r)
    [dead_id] = await dead_ids(r, settings)

    code, out, _ = await wks("dead", "list")
    assert code == 0
    row = out.splitlines()[1].split(None, 3)
    assert row[:2] == [dead_id, "workflow"]
    assert "totalSteps" in row[3]

    code, out, _ = await wks("dead", "show", dead_id)
    assert code == 0
    assert f"entryId     {source}\n" in out
    assert "group       state\n" in out
    assert out.endswith(json.dumps(BROKEN) + "\n")

    code, _, err = await wks("dead", "replay", dead_id)  # still invalid: refused, kept
    assert code == 1
    assert "totalSteps" in err
    assert await dead_ids(r, settings) == [dead_id]

    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({**BROKEN, "totalSteps": 3}))
    code, out, err = await wks("dead", "replay", dead_id, "--payload-file", str(fixed))
    assert code == 0, err
    new_id = out.strip()
    assert new_id > source
    assert await dead_ids(r, settings) == []
    await fold(settings, r)
    async with await Store.open(settings.db_path) as store:
        state = await store.get_state("job-7")
        assert state is not None
        assert (state.total_steps, state.status) == (3, "running")
        assert await store.entry_applied(new_id)

    code, _, err = await wks("dead", "show", dead_id)
    assert code == 1
    assert "no dead letter" in err


async def test_replay_with_an_inline_payload_and_jsonl_listing(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """`--payload JSON` works too; `list --format jsonl` gives every field but the payload."""
    await add(r, settings, {"type": "workflow.bogus"})
    await fold(settings, r)
    code, out, _ = await wks("dead", "list", "--format", "jsonl")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["group"] == "state"
    assert row["deliveries"] == "1"
    payload = json.dumps({"type": "workflow.cancelled", "executionId": "j", "ts": 9})
    code, _, err = await wks("dead", "replay", row["id"], "--payload", payload)
    assert code == 0, err
    await fold(settings, r)
    async with await Store.open(settings.db_path) as store:
        state = await store.get_state("j")
        assert state is not None
        assert state.status == "cancelled"


async def test_purge_needs_confirmation_and_honours_before(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """Without a terminal purge needs --yes; --before keeps the newer letters."""
    dead = settings.keys.dead_stream
    for ms in (1000, 2000, 3000):
        await r.xadd(dead, {"stream": "x", "reason": "r", "payload": b"{}"}, id=f"{ms}-0")
    code, _, err = await wks("dead", "purge")
    assert code == 1
    assert "would purge 3 dead letters: add --yes" in err
    code, out, _ = await wks("dead", "purge", "--before", "2500", "--yes")
    assert code == 0
    assert out.strip() == "purged 2 dead letters older than 2500-0"
    assert await dead_ids(r, settings) == ["3000-0"]
    code, out, _ = await wks("dead", "purge", "--yes")
    assert out.strip() == "purged 1 dead letters"
    assert await dead_ids(r, settings) == []
