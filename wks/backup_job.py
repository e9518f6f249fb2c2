"""One backup, end to end, under the `backup` lock; verify by id; runtime backup config.

Steps (SPEC section 7): sweep what an interrupted run left -> note the state group's safe
point -> `in_progress` row -> snapshot into a temp file -> compress + SHA-256 + fsync ->
atomic publish -> verify -> fenced commit of the `completed` row -> rotate (rows deleted in a
fenced transaction first, files after, so a completed row never lacks its file; the files'
names wait in `backup_trash` until they are gone, for the sweep should the run die first).

The safe point is the smallest workflow-stream entry id the snapshot may lack: the oldest
entry pending in the `state` group, else the group's last-delivered id. Every entry below it
was acknowledged, hence committed, before the snapshot began. A restore replays from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from wks import backup as files
from wks import backup_log as log
from wks import catch_up, metrics
from wks.config import BACKUP_INTERVAL_MAX, BACKUP_INTERVAL_MIN, COMPRESSIONS, Settings
from wks.errors import BackupError, LockError, NotFound, StaleFencingToken
from wks.keys import GROUP_STATE, Keys
from wks.locks import Lock
from wks.redis import text
from wks.store import Store
from wks.stream_stats import stream_groups

LOCK_NAME = "backup"
MIN_INTERVAL_MS = int(BACKUP_INTERVAL_MIN * 1000)
MAX_INTERVAL_MS = int(BACKUP_INTERVAL_MAX * 1000)
MAX_BACKUPS_LIMIT = 1000


@dataclass(frozen=True)
class BackupConfig:
    """Runtime backup settings: the Redis hash `wks:backup:config` over the static settings."""

    autoBackupEnabled: bool  # the API's camelCase names
    autoBackupInterval: int  # milliseconds, as in the seed
    maxBackups: int
    compression: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _defaults(settings: Settings) -> BackupConfig:
    return BackupConfig(
        settings.auto_backup_enabled, int(settings.auto_backup_interval * 1000),
        settings.max_backups, settings.compression,
    )


def validate_config(body: Any) -> dict[str, Any]:
    """Check a PUT body; the recognised keys, converted. ValueError names the bad one."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    out: dict[str, Any] = {}
    known = ("autoBackupEnabled", "autoBackupInterval", "maxBackups", "compression")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    if "autoBackupEnabled" in body:
        if not isinstance(body["autoBackupEnabled"], bool):
            raise ValueError("autoBackupEnabled must be true or false")
        out["autoBackupEnabled"] = body["autoBackupEnabled"]
    for name, low, high in (("autoBackupInterval", MIN_INTERVAL_MS, MAX_INTERVAL_MS),
                            ("maxBackups", 1, MAX_BACKUPS_LIMIT)):
        if name in body:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}")
            out[name] = value
    if "compression" in body:
        if body["compression"] not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
        out["compression"] = body["compression"]
    return out


def _decode(raw: dict[bytes, bytes], base: BackupConfig) -> BackupConfig:
    values = base.as_dict()
    for key, value in raw.items():
        name, text = key.decode(), value.decode()
        try:
            if name == "autoBackupEnabled":
                values[name] = text == "true"
            elif name in ("autoBackupInterval", "maxBackups"):
                values[name] = int(text)
            elif name == "compression" and text in COMPRESSIONS:
                values[name] = text
        except ValueError:
            logger.warning("ignoring bad backup config value {}={!r}", name, text)
    return BackupConfig(**values)


async def read_config(redis: aioredis.Redis, settings: Settings) -> BackupConfig:
    """The config every worker honours (re-read each cycle)."""
    raw = await redis.hgetall(settings.keys.backup_config)
    return _decode(raw, _defaults(settings))


async def write_config(
    redis: aioredis.Redis, settings: Settings, changes: dict[str, Any]
) -> BackupConfig:
    """Store validated changes (see `validate_config`); the resulting config."""
    if changes:
        mapping = {k: ("true" if v else "false") if isinstance(v, bool) else str(v)
                   for k, v in changes.items()}
        await redis.hset(settings.keys.backup_config, mapping=mapping)  # type: ignore[arg-type]
    return await read_config(redis, settings)


async def safe_point(redis: aioredis.Redis, keys: Keys) -> str:
    """The smallest workflow entry id a snapshot taken now may lack ('-': from the start)."""
    try:
        pending = await redis.xpending_range(keys.workflow_stream, GROUP_STATE, min="-",
                                             max="+", count=1)
        if pending:
            return text(pending[0]["message_id"])
        for group in await stream_groups(redis, keys.workflow_stream):
            if text(group["name"]) == GROUP_STATE:
                last = text(group["last-delivered-id"])
                return "-" if last == "0-0" else last
    except ResponseError:
        pass  # no stream or no group yet: replay everything
    return "-"


async def sweep(store: Store, directory: Path) -> None:
    """Undo what interrupted runs left: temp files, `in_progress` rows with the file they
    had named, and rotated files not yet deleted. Files the log does not name are left
    alone. The files go first and their records after, so a run killed here leaves the
    records for the next sweep. Only under the lock."""
    await asyncio.to_thread(files.sweep_temps, directory)
    interrupted = {Path(str(p)).name for (p,) in await store.fetchall(
        "SELECT file_path FROM backup_log WHERE status = 'in_progress'"
        " AND file_path IS NOT NULL")}
    rotated = await log.trash(store)
    owned = {Path(str(p)).name for (p,) in await store.fetchall(
        "SELECT file_path FROM backup_log WHERE status = 'completed' AND file_path IS NOT NULL")}
    named = interrupted | {Path(p).name for p in rotated}
    for name in await asyncio.to_thread(files.remove_named, directory, named - owned):
        logger.info("removed the file of an interrupted or rotated backup: {}", name)
    await store.conn.execute(
        "UPDATE backup_log SET status = 'failed', completed_at = ?,"
        " error_message = 'interrupted before it completed' WHERE status = 'in_progress'",
        (log.iso(),),
    )
    await log.emptied(store, sorted(rotated))


async def take_backup(
    store: Store,
    redis: aioredis.Redis,
    settings: Settings,
    lock: Lock,
    *,
    backup_type: str = "manual",
    request_id: str | None = None,
    config: BackupConfig | None = None,
) -> dict[str, Any]:
    """Run every backup step under the held `lock`; the completed row.

    Raises BackupError (recorded as a failed row) or StaleFencingToken (nothing recorded:
    the lock's new holder owns the log now).
    """
    lock.check()
    config = config or await read_config(redis, settings)
    try:
        directory = files.ensure_dir(settings.backup_dir)
    except OSError as exc:  # a failed backup to report, not a transient fault to retry
        error = BackupError("backup directory", settings.backup_dir.name, files.reason(exc))
        metrics.BACKUPS.labels(backup_type, "failed").inc()
        # recorded like any other failed backup (failedBackups counts it); the store may
        # be what failed too, and the answer on the results stream still goes out
        try:
            failed_id = await log.start(store, backup_type, request_id, lock.token or 0, None,
                                        log.iso(files.utcnow()))
            await log.mark_failed(store, failed_id, str(error))
        except Exception as record:
            logger.bind(request_id=request_id).error(
                "backup failed ({}), and so did recording it in backup_log: {}", error, record)
        raise error from exc
    await sweep(store, directory)
    # a database still finishing a restore's catch-up lacks entries from before that point
    replay_from = catch_up.earlier(await safe_point(redis, settings.keys),
                                   await catch_up.pending(store))
    started = time.perf_counter()
    when = files.utcnow()
    token = lock.token or 0
    backup_id = await log.start(store, backup_type, request_id, token, replay_from,
                                log.iso(when))
    bound = logger.bind(backup_id=backup_id, request_id=request_id, fencing_token=token)
    final: Path | None = None
    snap = files.temp_path(directory)
    try:
        await asyncio.to_thread(files.snapshot, settings.db_path, snap)
        lock.check()
        tmp, checksum, size = await asyncio.to_thread(files.finish, snap, config.compression)
        lock.check()
        # the row names the file before it exists, so a kill after the rename leaves a
        # file that the next sweep knows is ours to remove
        name = await asyncio.to_thread(files.free_name, directory, when, config.compression)
        await log.set_path(store, backup_id, name)
        final = await asyncio.to_thread(files.publish, tmp, name)
        verdict = await asyncio.to_thread(files.verify, final, checksum, directory,
                                          files.TEMP_PREFIX)
        if not verdict.valid:
            metrics.VERIFY_FAILURES.inc()
            raise BackupError("verify", final.name, verdict.message)
        lock.check()

        async def commit(conn: Any) -> list[tuple[int, str]]:
            await log.complete_sql(conn, backup_id, final, size, checksum)
            return await log.rotation_victims(conn, config.maxBackups)

        victims = await log.fenced(store, LOCK_NAME, token, commit, lock.current_fence)
    except StaleFencingToken:
        _remove(final, snap)
        metrics.BACKUPS.labels(backup_type, "failed").inc()
        bound.error("backup refused at commit: the lock has a newer holder")
        raise
    except Exception as exc:
        _remove(final, snap)
        metrics.BACKUPS.labels(backup_type, "failed").inc()
        with contextlib.suppress(Exception):
            await log.mark_failed(store, backup_id, files.reason(exc))
        bound.error("backup failed: {}", exc)
        if isinstance(exc, BackupError):
            raise
        if lock.lost.is_set():  # its files may be gone too: the new holder's sweep
            raise BackupError("backup", f"(lock {LOCK_NAME!r} lost to another holder)",
                              files.reason(exc)) from exc
        raise BackupError("backup", "step", files.reason(exc)) from exc
    if victims:
        await asyncio.to_thread(files.remove_files, [Path(p) for _vid, p in victims], directory)
        await log.emptied(store, [p for _vid, p in victims])
    elapsed = time.perf_counter() - started
    metrics.BACKUPS.labels(backup_type, "completed").inc()
    metrics.BACKUP_SECONDS.labels(backup_type).observe(elapsed)
    metrics.BACKUP_SIZE.set(size)
    metrics.BACKUP_LAST_SUCCESS.set(time.time())
    bound.info("backup {} completed ({} bytes, {:.2f}s, rotated {})", final.name, size,
               elapsed, len(victims))
    row = await log.get(store, backup_id)
    assert row is not None
    row["duration_ms"] = int(elapsed * 1000)
    return row


def _remove(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def backup_path(row: dict[str, Any], directory: Path) -> Path:
    """The file of a row, refusing anything that is not a server-made name in backupDir."""
    name = Path(str(row.get("file_path") or "")).name
    if not files.is_backup_name(name):
        raise BackupError("verify", name or "?", "not a backup file name")
    return directory / name


async def verify_backup(
    store: Store, settings: Settings, backup_id: int, *, record: bool = True
) -> files.Verdict:
    """Verify a completed backup by id (NotFound for others); note success in the row."""
    row = await log.get(store, backup_id)
    if row is None or row["status"] != "completed":
        raise NotFound(f"backup {backup_id} not found")
    path = backup_path(row, settings.backup_dir)
    verdict = await asyncio.to_thread(files.verify, path, row["checksum"], settings.backup_dir)
    if not verdict.valid:
        metrics.VERIFY_FAILURES.inc()
    elif record:
        await store.conn.execute("UPDATE backup_log SET verified_at = ? WHERE id = ?",
                                 (log.iso(), backup_id))
    return verdict


async def locked_backup(
    store: Store, redis: aioredis.Redis, settings: Settings, *, backup_type: str = "manual",
    request_id: str | None = None, wait: float | None = None,
) -> dict[str, Any]:
    """Take the `backup` lock (waiting up to `wait`, default lockTtl) and run a backup."""
    lock = Lock(redis, settings.keys, LOCK_NAME, settings.lock_ttl)
    timeout = settings.lock_ttl if wait is None else wait
    if not await lock.acquire(blocking=True, timeout=timeout):
        raise LockError(f"lock {LOCK_NAME!r}: another backup held it for {timeout:g}s")
    try:
        return await take_backup(store, redis, settings, lock, backup_type=backup_type,
                                 request_id=request_id)
    finally:
        await lock.release()
