"""Building the real state consumer in tests, and checking what it stored."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from consumers.reader import GroupReader
from consumers.state import StateHandler
from wks.config import Settings
from wks.keys import GROUP_STATE
from wks.state import TERMINAL, State, decode_fold, mirror_fields, state_dict, to_state
from wks.store import Store


def state_reader(
    settings: Settings, redis: aioredis.Redis, store: Store, *, burst: bool = True,
    consumer: str | None = None, group: str = GROUP_STATE, **kw: Any,
) -> GroupReader:
    keys = settings.keys
    options: dict[str, Any] = {"claim_idle": settings.claim_idle,
                               "max_deliveries": settings.max_deliveries}
    options.update(kw)
    return GroupReader(
        redis, keys, name="workflow", stream=keys.workflow_stream, group=group,
        handler=StateHandler(store, redis, keys, settings.state_ttl), consumer=consumer,
        burst=burst, **options,
    )


async def stored_states(store: Store) -> dict[str, dict[str, Any]]:
    rows = await store.fetchall("SELECT execution_id, fold, status, progress FROM executions")
    out: dict[str, dict[str, Any]] = {}
    for eid, blob, status, progress in rows:
        state = state_dict(to_state(decode_fold(blob)))
        # the columns an operator reads with sqlite3 agree with the fold
        assert (status, progress) == (state["status"], state["progress"]), eid
        out[eid] = state
    return out


async def assert_mirror_matches(
    redis: aioredis.Redis, settings: Settings, expected: dict[str, State]
) -> None:
    keys = settings.keys
    async with redis.pipeline(transaction=False) as pipe:
        for eid in expected:
            pipe.hgetall(keys.workflow(eid))
            pipe.pttl(keys.workflow(eid))
        replies = await pipe.execute()
    for i, (eid, state) in enumerate(expected.items()):
        got = {k.decode(): v.decode() for k, v in replies[2 * i].items()}
        assert got == mirror_fields(state), eid
        ttl = replies[2 * i + 1]
        if state.status in TERMINAL:
            assert 0 < ttl <= settings.state_ttl * 1000, (eid, ttl)
        else:
            assert ttl == -1, (eid, ttl)
    active = {m.decode() for m in await redis.smembers(keys.active)}
    assert active == {e for e, s in expected.items() if s.status not in TERMINAL}
