"""Scheduled backups: exactly one per `autoBackupInterval`, however many workers run.

Every worker of the backup group runs this loop. Time is cut into slots of the interval
(epoch ms // interval); the first worker to claim a slot's key (SET NX, with a TTL of two
intervals) publishes `backup.requested` with backupType `scheduled` in the same Lua script,
so a claim never exists without its request. The config is re-read from the Redis hash every
cycle (at least every few seconds), so a change through the API reaches every worker.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from wks import metrics
from wks.aio import wait_stop
from wks.backup_job import read_config
from wks.config import Settings
from wks.events import BackupRequested, encode
from wks.keys import EVENT_FIELD
from wks.redis import REDIS_DOWN, Backoff, text

RECHECK = 5.0  # seconds: the longest a config change waits to be noticed

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[4])
end
return false
"""


async def claim_slot(
    redis: aioredis.Redis, settings: Settings, interval_ms: int, slot: int, owner: str
) -> str | None:
    """Claim one interval's slot and publish its request; the entry id, or None if taken."""
    keys = settings.keys
    event = BackupRequested(
        ts=int(time.time() * 1000), request_id=f"scheduled-{interval_ms}-{slot}",
        backup_type="scheduled", requested_by="scheduler",
    )
    script = redis.register_script(_CLAIM)
    reply = await script(
        keys=[keys.schedule_slot(interval_ms, slot), keys.backup_stream],
        args=[owner, interval_ms * 2, EVENT_FIELD, encode(event)],
    )
    if not reply:
        return None
    return text(reply)


async def run_scheduler(
    redis: aioredis.Redis, settings: Settings, stop: asyncio.Event, owner: str
) -> None:
    """Claim each interval's slot while scheduling is enabled, until `stop` is set."""
    log = logger.bind(consumer=owner)
    backoff = Backoff()
    while not stop.is_set():
        try:
            config = await read_config(redis, settings)
            wait = RECHECK
            # the interval in force (0: disabled), for the "no backup in 1.1 x interval" alert
            metrics.BACKUP_INTERVAL.set(
                config.autoBackupInterval / 1000 if config.autoBackupEnabled else 0)
            if config.autoBackupEnabled:
                interval = config.autoBackupInterval
                now = int(time.time() * 1000)
                slot = now // interval
                entry = await claim_slot(redis, settings, interval, slot, owner)
                if entry is not None:
                    log.info("scheduled backup for slot {} requested ({})", slot, entry)
                wait = min(RECHECK, ((slot + 1) * interval - now) / 1000)
            backoff.reset()
        except (*REDIS_DOWN, ResponseError) as exc:
            wait = backoff.next()
            log.warning("scheduler: redis failed ({}); retrying", exc)
        await wait_stop(stop, max(wait, 0.001))
