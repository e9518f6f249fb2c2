"""The `state` group: fold workflow events into SQLite and keep the Redis mirror current.

The mirror (`wks:workflow:{id}` hashes and the `wks:executions:active` set) is written in
one MULTI pipeline inside the SQLite write transaction, just before COMMIT. Writes to the
mirror therefore happen in the same order as commits, so with several consumers the mirror
ends equal to the committed state. If the commit then fails, the mirror is briefly ahead of
SQLite with events that are still pending in the stream and will be applied on redelivery.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import redis.asyncio as aioredis
from loguru import logger

from consumers.mirror import MirrorWriter
from wks.batch_rows import LogRows, log_rows_sliced
from wks.events import StreamEntry, WorkflowEvent, decode_workflow, decode_workflows
from wks.keys import Keys
from wks.state import State
from wks.store import Store


class StateHandler:
    def __init__(
        self, store: Store, redis: aioredis.Redis, keys: Keys, state_ttl: float,
        *, crash_after_commit: int = 0,
    ) -> None:
        self.store = store
        self.redis = redis
        self.keys = keys
        self.state_ttl_ms = int(state_ttl * 1000)
        self._mirror = MirrorWriter(redis, keys, self.state_ttl_ms)
        # test hook (setting debugCrashAfterCommit, 0 = off): die after the Nth commit,
        # before the reader acknowledges, to prove redelivered entries are folded once
        self.crash_after_commit = crash_after_commit
        self.commits = 0

    def decode(self, raw: bytes) -> WorkflowEvent:
        return decode_workflow(raw)

    def decode_many(self, raws: list[bytes]) -> list[WorkflowEvent] | None:
        return decode_workflows(raws)

    async def prepare(self, items: Sequence[StreamEntry]) -> LogRows:
        return await log_rows_sliced(items)

    async def apply(self, items: Sequence[StreamEntry], prepared: LogRows | None = None) -> None:
        await self.store.apply_batch(items, before_commit=self.mirror, logs=prepared)
        self.commits += 1
        if 0 < self.crash_after_commit <= self.commits:
            logger.warning("debugCrashAfterCommit: exiting after commit {}, before XACK",
                           self.commits)
            os._exit(137)

    async def mirror(self, states: list[State]) -> None:
        """Write the batch's states to the mirror in one atomic server call."""
        await self._mirror.write(states)
