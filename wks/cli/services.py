"""The long-running services a process can run, built from a `Runtime`.

`wks up` runs all of them; `wks worker` the consumer groups; `wks api` the HTTP server.
"""

from __future__ import annotations

import asyncio

from consumers.reader import GroupReader
from consumers.retention import retention_service
from consumers.state import StateHandler
from wks import catch_up
from wks.cli.backup_service import backup_service
from wks.cli.runtime import Runtime, Service
from wks.keys import GROUP_BACKUP, GROUP_STATE
from wks.store import FOLD_BATCH, Store

# `wks up` serves the API from the same event loop, and during a backlog a full FOLD_BATCH
# holds that loop for tens of ms at a time while it is decoded, folded and merged; batches a
# tenth the size keep API reads answered between them, at a lower fold rate
SHARED_LOOP_BATCH = 2_000


def state_service(rt: Runtime, *, burst: bool = False, shared_loop: bool = False) -> Service:
    """The `state` group: fold the workflow stream into SQLite and the Redis mirror.
    `shared_loop`: the HTTP API runs on the same event loop (`wks up`): smaller batches,
    and no disk waits on the loop (Store.commit_small_on_loop)."""
    settings = rt.settings
    keys = settings.keys

    async def run(stop: asyncio.Event) -> None:
        store = await Store.open(settings.db_path)
        store.commit_small_on_loop = not shared_loop
        handler = StateHandler(
            store, rt.redis, keys, settings.state_ttl,
            crash_after_commit=settings.debug_crash_after_commit,
        )
        reader = GroupReader(
            rt.redis, keys, name="workflow", stream=keys.workflow_stream, group=GROUP_STATE,
            handler=handler, claim_idle=settings.claim_idle,
            max_deliveries=settings.max_deliveries,
            batch_size=SHARED_LOOP_BATCH if shared_loop else FOLD_BATCH, burst=burst,
        )
        try:
            # the reader's heartbeat from the start: a restore must not take this process
            # for stopped while it finishes an interrupted restore's catch-up
            async with reader.heartbeat.running():
                await catch_up.finish_before_folding(rt.redis, keys, store, stop)
                rt.readers[GROUP_STATE] = reader
                await reader.run(stop)
        finally:
            await store.close()

    return run


# "retention" is not a consumer group but runs wherever the groups run (every worker, and
# up): the trimmer, one pass at a time across workers under lock `trim`
RETENTION = "retention"
GROUP_SERVICES = {GROUP_STATE: state_service, GROUP_BACKUP: backup_service,
                  RETENTION: retention_service}
