"""The `backup` group service: the backup consumer plus the backup scheduler, together."""

from __future__ import annotations

import asyncio
from datetime import datetime

from consumers.backup import BackupHandler
from consumers.reader import GroupReader, consumer_name
from consumers.scheduler import run_scheduler
from wks import metrics
from wks.cli.runtime import Runtime, Service
from wks.keys import GROUP_BACKUP
from wks.store import Store


async def load_last_success(store: Store) -> None:
    """Start the last-success gauge from backup_log, so a restarted worker does not look
    as if it had never made a backup."""
    newest = await store.scalar(
        "SELECT MAX(completed_at) FROM backup_log WHERE status = 'completed'")
    if newest:
        moment = datetime.fromisoformat(str(newest).replace("Z", "+00:00"))
        metrics.BACKUP_LAST_SUCCESS.set(moment.timestamp())


def backup_service(rt: Runtime, *, burst: bool = False) -> Service:
    """Run backup commands under the lock; claim scheduled-backup slots (not in burst mode)."""
    settings = rt.settings

    async def run(stop: asyncio.Event) -> None:
        keys = settings.keys
        store = await Store.open(settings.db_path)
        try:
            await load_last_success(store)
            consumer = consumer_name()
            reader = GroupReader(
                rt.redis, keys, name="backup", stream=keys.backup_stream, group=GROUP_BACKUP,
                handler=BackupHandler(store, rt.redis, settings), consumer=consumer,
                # a claim before the lock's TTL would only wait on the lock the owner holds
                claim_idle=max(settings.claim_idle, settings.lock_ttl),
                max_deliveries=settings.max_deliveries, batch_size=10, burst=burst,
            )
            rt.readers[GROUP_BACKUP] = reader
            async with asyncio.TaskGroup() as tasks:
                if not burst:
                    tasks.create_task(run_scheduler(rt.redis, settings, stop, consumer))
                tasks.create_task(reader.run(stop))
        finally:
            await store.close()

    return run
