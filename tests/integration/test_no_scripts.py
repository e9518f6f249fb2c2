"""Where an ACL forbids scripts, the whole pipeline falls back to plain commands."""

from __future__ import annotations

import asyncio
import random

from producers.client import Producer
from tests.consumers import assert_mirror_matches, state_reader, stored_states
from tests.helpers import without_scripts
from tests.workload import as_dicts, reference, workload
from wks.config import Settings
from wks.store import Store


async def test_pipeline_folds_and_mirrors_without_scripting(
    settings: Settings, redis_factory: object
) -> None:
    """Producer, reader and mirror all work for a user without +@scripting."""
    server = redis_factory(appendonly=False)  # type: ignore[operator]
    async with without_scripts(server) as (_admin, r):
        events = workload(600, 30, random.Random(8))
        producer = Producer(r, settings.keys)
        ids = await producer.publish_many(events)
        assert ids is not None
        assert producer.mode == "pipeline"
        async with await Store.open(settings.db_path) as store:
            await state_reader(settings, r, store).run(asyncio.Event())
            expected = reference(list(zip(events, ids, strict=True)))
            assert await stored_states(store) == as_dicts(expected)
        await assert_mirror_matches(r, settings, expected)
