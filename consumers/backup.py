"""The `backup` group: run `backup.requested` and `backup.verify_requested` commands.

Each command runs under the `backup` lock and ends with a result event on the results
stream. A request is idempotent by its requestId: a redelivered request whose backup already
completed publishes the same result again instead of taking a second backup. A busy or lost
lock is transient (the entry stays pending and is retried); a failed backup is recorded and
reported, then acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from loguru import logger

from wks import backup_job
from wks import backup_log as log
from wks.config import Settings
from wks.errors import BackupError, LockError, NotFound, TransientError
from wks.events import (
    BackupCommand,
    BackupCompleted,
    BackupFailed,
    BackupRequested,
    BackupVerified,
    StreamEntry,
    decode_backup,
    encode,
    now_ms,
)
from wks.keys import EVENT_FIELD
from wks.store import Store


def completed_event(row: dict[str, Any], request_id: str | None) -> BackupCompleted:
    """The result event of a completed backup_log row."""
    return BackupCompleted(
        ts=now_ms(), backup_id=row["id"], backup_type=row["backup_type"],
        file_path=str(row["file_path"]).rsplit("/", 1)[-1],  # the name only, never a path
        file_size_bytes=int(row["file_size_bytes"] or 0), checksum=str(row["checksum"]),
        duration_ms=int(row.get("duration_ms") or 0), request_id=request_id,
        fencing_token=row.get("fencing_token"),
    )


async def publish_result(redis: aioredis.Redis, stream: str, event: Any) -> None:
    await redis.xadd(stream, {EVENT_FIELD: encode(event)})


class BackupHandler:
    def __init__(self, store: Store, redis: aioredis.Redis, settings: Settings) -> None:
        self.store = store
        self.redis = redis
        self.settings = settings
        self.results = settings.keys.results_stream

    def decode(self, raw: bytes) -> BackupCommand:
        return decode_backup(raw)

    def decode_many(self, raws: list[bytes]) -> None:
        return None  # a command at a time: each judged by `decode`

    async def prepare(self, items: Sequence[StreamEntry]) -> None:
        return None  # one backup or verification at a time: nothing to do ahead

    async def apply(self, items: Sequence[StreamEntry], prepared: None = None) -> None:
        for item in items:
            if isinstance(item.event, BackupRequested):
                await self._backup(item.event, item.entry_id)
            else:
                await self._verify(item.event)

    async def _backup(self, event: BackupRequested, entry_id: str) -> None:
        rid = event.request_id
        bound = logger.bind(request_id=rid, entry_id=entry_id)
        done = await log.by_request(self.store, rid)
        if done is not None and done["status"] == "completed":
            bound.info("request already completed as backup {}; re-publishing", done["id"])
            await publish_result(self.redis, self.results, completed_event(done, rid))
            return
        try:
            row = await backup_job.locked_backup(
                self.store, self.redis, self.settings, backup_type=event.backup_type,
                request_id=rid,
            )
        except LockError as exc:  # busy, lost, or refused as stale: retry the entry later
            raise TransientError(f"backup request {rid}: {exc}") from exc
        except BackupError as exc:
            failed = await log.by_request(self.store, rid)
            await publish_result(self.redis, self.results, BackupFailed(
                ts=now_ms(), error=str(exc), backup_id=failed["id"] if failed else None,
                backup_type=event.backup_type, request_id=rid))
            return
        await publish_result(self.redis, self.results, completed_event(row, rid))

    async def _verify(self, event: Any) -> None:
        try:
            verdict = await backup_job.verify_backup(self.store, self.settings, event.backup_id)
            result = BackupVerified(ts=now_ms(), backup_id=event.backup_id,
                                    valid=verdict.valid, message=verdict.message,
                                    checks=verdict.checks, request_id=event.request_id)
        except (NotFound, BackupError) as exc:
            result = BackupVerified(ts=now_ms(), backup_id=event.backup_id, valid=False,
                                    message=str(exc), request_id=event.request_id)
        await publish_result(self.redis, self.results, result)
