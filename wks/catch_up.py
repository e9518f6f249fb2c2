"""A restore's catch-up, recorded in the database it completes.

`wks restore` swaps a backup in, then folds the workflow stream from the backup's safe point
onward. The state group has acknowledged those entries long ago, so if the restore dies
during that fold nothing else would ever apply them: the restored copy therefore carries a
row in `restore_catch_up` from before the swap, deleted only once the fold is done. Until
then /health reports the database degraded, and whoever opens it to fold (a rerun of the
restore, `wks worker`, `wks up`) finishes the catch-up first; folding is idempotent, so
running it twice, or from two workers at once, changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis
from loguru import logger

from wks.aio import wait_stop
from wks.events import split_entry_id
from wks.keys import Keys
from wks.redis import REDIS_DOWN, Backoff, text
from wks.replay import FoldStats, fold_range
from wks.store import Store


def earlier(a: str, b: str | None) -> str:
    """The earlier of two stream positions ('-' is the stream's start; None: no bound)."""
    if b is None:
        return a
    if "-" in (a, b):
        return "-"
    return min(a, b, key=split_entry_id)


async def unreachable(
    redis: aioredis.Redis, keys: Keys, start: str, *, exact: bool = True
) -> str | None:
    """Why the workflow stream cannot hold what a catch-up from `start` must fold, or None.

    Retention never trims an entry a group has not read, so when the backup was taken the
    stream held its safe point `start` (an entry id, `exact`) or something before it; a
    stream whose oldest entry is now past it lost entries after the backup: trimmed by age
    (the backup is older than `streamRetention`), or this is not the Redis the backup was
    taken against (one that came up empty holds only what was published since). A stream
    trimmed to exactly the safe point reads the same, and is reported too. For a start that
    is only a time (backups from before safe points were recorded), an empty or missing
    stream is reported, and nothing more can be told. The restore goes ahead either way and
    says so (SPEC 7 restores every event still in the stream)."""
    if start == "-":
        return None
    oldest = await redis.xrange(keys.workflow_stream, min="-", max="+", count=1)
    if not oldest:
        return f"the workflow stream is empty or missing, where a replay from {start} is due"
    first = text(oldest[0][0])
    if exact and split_entry_id(first) > split_entry_id(start):
        return (f"the workflow stream's oldest entry {first} is past the backup's safe point "
                f"{start}: the entries between were trimmed by age, or this Redis lost them")
    return None


async def mark(store: Store, replay_from: str, backup: str) -> None:
    """Record the catch-up the restored copy in `store` still needs. A copy that carries an
    unfinished catch-up of its own (its backup was taken during one) keeps the earlier
    start."""
    async with store.transaction("record the restore's catch-up") as conn:
        cursor = await conn.execute("SELECT replay_from FROM restore_catch_up WHERE id = 1")
        row = await cursor.fetchone()
        await cursor.close()
        start = earlier(replay_from, None if row is None else str(row[0]))
        await conn.execute(
            "INSERT OR REPLACE INTO restore_catch_up (id, replay_from, backup, restored_at)"
            " VALUES (1, ?, ?, ?)",
            (start, backup, datetime.now(UTC).isoformat(timespec="seconds")))


async def pending(store: Store) -> str | None:
    """Where the unfinished catch-up starts, or None."""
    value = await store.scalar("SELECT replay_from FROM restore_catch_up WHERE id = 1")
    return None if value is None else str(value)


async def finish(
    redis: aioredis.Redis, keys: Keys, store: Store,
    on_page: Callable[[FoldStats], None] | None = None, stop: asyncio.Event | None = None,
) -> FoldStats | None:
    """Run the recorded catch-up, if any, and clear the record (kept when `stop` cut the
    fold short: the next start folds the range again); None when there was none."""
    start = await pending(store)
    if start is None:
        return None
    stats = await fold_range(redis, keys.workflow_stream, store, start, on_page=on_page,
                             stop=stop)
    if not stats.stopped:
        async with store.transaction("clear the restore's catch-up") as conn:
            await conn.execute("DELETE FROM restore_catch_up")
    return stats


async def finish_before_folding(
    redis: aioredis.Redis, keys: Keys, store: Store, stop: asyncio.Event
) -> None:
    """For a state consumer at start: finish an interrupted restore's catch-up first (the
    group has acknowledged those entries: nothing else would fold them), waiting out Redis
    outages like the consumer itself. The caller keeps its heartbeat meanwhile, so that a
    restore does not take it for stopped."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            start = await pending(store)
            if start is None:
                return
            logger.warning("finishing an interrupted restore: folding the stream from {}",
                           start)
            stats = await finish(redis, keys, store, stop=stop)
            if stats is not None and not stats.stopped:
                logger.info("restore catch-up done: {} entries folded", stats.entries)
            return
        except REDIS_DOWN as exc:
            logger.warning("restore catch-up waits for Redis: {}", exc)
            await wait_stop(stop, backoff.next())
