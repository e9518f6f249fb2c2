"""Restore a backup over the live database (offline), then catch up from the stream.

Order, so that a crash at any step leaves the old database or the new one, never a mix:

1. verify the backup (checksum before opening, integrity_check);
2. write its plain database to a temp file beside `dbPath`, migrate it, carry the current
   `backup_log` and fencing table over (they describe files that outlive the restore),
   switch it to rollback-journal mode, fsync it;
3. safety backup of the current database (type `pre-migration`, under the backup lock);
4. checkpoint the old database into its main file, remove its `-wal`/`-shm`, rename the temp
   file over `dbPath`, fsync the directory;
5. fold the workflow stream from the backup's safe point onward (idempotent, so entries the
   backup already held are harmless). The copy carries a record of this step from step 2
   on, cleared when it is done: a restore killed here is finished by its rerun or by the
   next state consumer to start (wks.catch_up).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from loguru import logger

from wks import backup as files
from wks import backup_job, catch_up
from wks import backup_log as log
from wks.config import Settings
from wks.errors import BackupError, NotFound, StoreError, WksError
from wks.keys import GROUP_STATE
from wks.liveness import running_consumers
from wks.replay import FoldStats
from wks.store import Store


@dataclass
class RestoreResult:
    backup_id: int | None  # None: restored from a file named on the command line
    safety_backup_id: int | None
    replay_from: str
    replayed: int
    gap: str | None = None  # why the stream did not hold every event after the backup


def _remove_temp(temp: Path) -> None:
    """The restore's temp copy and any SQLite side files a killed restore left beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{temp}{suffix}").unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpoint_and_unlink_wal(db_path: Path) -> None:
    """Fold the old WAL into the main file, then remove `-wal`/`-shm` (offline only)."""
    if db_path.exists():
        try:
            conn = sqlite3.connect(db_path, timeout=30)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            logger.warning("could not checkpoint the old database ({}); replacing it anyway", exc)
        _fsync(db_path)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{db_path}{suffix}").unlink()


def swap(new: Path, db_path: Path) -> None:
    """Atomically put `new` (a standalone, fsynced database) in place of `db_path`."""
    _checkpoint_and_unlink_wal(db_path)
    os.replace(new, db_path)
    files.fsync_dir(db_path.parent)


def _unlisted(directory: Path, owned: set[str]) -> list[tuple[str, str, int, str]]:
    """(name, sha256, size, mtime) of backup files the restored log does not know."""
    out = []
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if files.is_backup_name(entry.name) and entry.name not in owned:
                digest, size = files.sha256_file(entry)
                mtime = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
                out.append((entry.name, digest, size, log.iso(mtime)))
    return out


async def _adopt(store: Store, directory: Path) -> None:
    """Record backup files newer than the restored log, so no sweep ever deletes them."""
    owned = {Path(str(p)).name for (p,) in await store.fetchall(
        "SELECT file_path FROM backup_log WHERE status = 'completed' AND file_path IS NOT NULL")}
    for name, digest, size, when in await asyncio.to_thread(_unlisted, directory, owned):
        await store.conn.execute(
            "INSERT INTO backup_log (backup_type, file_path, file_size_bytes, started_at,"
            " completed_at, status, checksum, request_id) VALUES"
            " ('manual', ?, ?, ?, ?, 'completed', ?, 'adopted-after-restore')",
            (str(directory / name), size, when, when, digest))
        logger.info("recorded backup file {} found beside the restored log", name)


async def _carry_over(
    temp: Path, current: Store | None, backup_dir: Path, replay_from: str, backup: str
) -> None:
    """Migrate the restored copy; give it the current backup_log and fence table (or, with
    no current log, record the backup files its own log does not know), and the record of
    the catch-up it still needs (wks.catch_up)."""
    store = await Store.open(temp)
    try:
        conn = store.conn
        await catch_up.mark(store, replay_from, backup)
        if current is not None:
            await conn.execute("ATTACH DATABASE ? AS cur", (str(current.path),))
            async with store.transaction("carry backup_log over"):
                await conn.execute("DELETE FROM main.backup_log")
                await conn.execute(f"INSERT INTO main.backup_log ({log.COLUMNS})"
                                   f" SELECT {log.COLUMNS} FROM cur.backup_log")
                await conn.execute("DELETE FROM main.fence")
                await conn.execute("INSERT INTO main.fence SELECT name, token FROM cur.fence")
            await conn.execute("DETACH DATABASE cur")
        else:
            await conn.execute(
                "UPDATE backup_log SET status = 'failed', error_message = 'interrupted'"
                " WHERE status = 'in_progress'")
            await _adopt(store, backup_dir)
        await conn.execute("PRAGMA journal_mode = DELETE")  # stands alone: no -wal to lose
    finally:
        await store.close()
    await asyncio.to_thread(_fsync, temp)


async def _open_current(db_path: Path, by_file: bool) -> Store | None:
    """The current database, or None when it is missing (or, restoring by file, unreadable)."""
    if not await asyncio.to_thread(os.path.exists, db_path):
        if not by_file:
            raise BackupError("restore", db_path.name, "no database to read the backup log "
                              "from; name the backup file with --file")
        await asyncio.to_thread(db_path.parent.mkdir, parents=True, exist_ok=True)
        return None
    try:
        return await Store.open(db_path)
    except StoreError as exc:
        if not by_file:
            raise BackupError("restore", db_path.name, f"cannot read the backup log ({exc}); "
                              "name the backup file with --file") from exc
        return None


async def _pick(
    settings: Settings, current: Store | None, backup_id: int | None, file_name: str | None
) -> tuple[dict[str, Any], Path]:
    if file_name is not None:
        if not files.is_backup_name(file_name):
            raise BackupError("restore", file_name, "not a backup file name")
        path = settings.backup_dir / file_name
        if not await asyncio.to_thread(os.path.isfile, path):
            raise NotFound(f"backup file {file_name} not found in the backup directory")
        # no log to hold its checksum: decompression and integrity_check must do
        return {"id": None, "file_path": str(path), "checksum": None, "completed_at": "?",
                "replay_from": None, "started_at": None}, path
    assert current is not None
    assert backup_id is not None
    row = await log.get(current, backup_id)
    if row is None or row["status"] != "completed":
        raise NotFound(f"backup {backup_id} not found (or not completed)")
    path = backup_job.backup_path(row, settings.backup_dir)
    verdict = await asyncio.to_thread(files.verify, path, row["checksum"], settings.backup_dir)
    if not verdict.valid:
        raise BackupError("restore", path.name, f"backup failed verification: "
                                                f"{verdict.message}")
    return row, path


async def _own_safe_point(temp: Path) -> str | None:
    """A snapshot holds its own `in_progress` row, with the safe point noted before it."""
    conn = sqlite3.connect(f"file:{temp}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT replay_from FROM backup_log WHERE status = 'in_progress'"
                             " ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return str(found[0]) if found and found[0] else None


async def restore(
    settings: Settings,
    redis: aioredis.Redis,
    backup_id: int | None,
    *,
    file_name: str | None = None,
    confirm: Callable[[dict[str, Any]], bool] = lambda row: True,
    force: bool = False,
    on_page: Callable[[FoldStats], None] | None = None,
) -> RestoreResult | None:
    """Restore backup `backup_id` (or the backup file `file_name`, when the database and its
    log are lost) over `dbPath`; None when `confirm` declined."""
    db_path = settings.db_path
    current = await _open_current(db_path, file_name is not None)
    temp = db_path.parent / f".{db_path.name}.restore.tmp"
    try:
        row, path = await _pick(settings, current, backup_id, file_name)
        active = await running_consumers(redis, settings.keys, GROUP_STATE)
        if active and not force:
            raise BackupError("restore", db_path.name, "state consumers are running ("
                              f"{', '.join(active[:3])}); stop them first (restore is offline)")
        if not confirm(row):
            return None
        _remove_temp(temp)
        try:
            await asyncio.to_thread(files.decompress, path, temp)
            sound = await asyncio.to_thread(files.integrity, temp) == "ok"
        except (OSError, EOFError, sqlite3.Error, ValueError) as exc:
            raise BackupError("restore", path.name, f"cannot read the backup: {exc}") from exc
        if not sound:
            raise BackupError("restore", path.name, "restored copy failed integrity_check")
        own_point = await _own_safe_point(temp)
        exact = row.get("replay_from") or own_point  # an entry id; else a time, or '-'
        start = exact or (_ms_bound(row["started_at"]) if row.get("started_at") else "-")
        # SPEC 7: state is whole again for every event *still in the stream*; what it lacks
        # is said, not refused (the safety backup undoes the restore)
        gap = await catch_up.unreachable(redis, settings.keys, start, exact=bool(exact))
        if gap is not None:
            logger.warning("{}: the events after the backup that it lacked are not restored",
                           gap)
        safety_id: int | None = None
        try:
            if current is None:
                raise BackupError("safety backup", db_path.name, "no readable database")
            safety = await backup_job.locked_backup(current, redis, settings,
                                                    backup_type="pre-migration")
            safety_id = int(safety["id"])
        except WksError as exc:
            if not force and await asyncio.to_thread(os.path.exists, db_path):
                raise BackupError("restore", db_path.name, f"safety backup failed ({exc}); "
                                  "use --force to restore without one") from exc
            logger.warning("restoring without a safety backup: {}", exc)
        await _carry_over(temp, current, settings.backup_dir, start,
                          str(backup_id or path.name))
        if current is not None:
            await current.close()
            current = None
        await asyncio.to_thread(swap, temp, db_path)
    finally:
        if current is not None:
            await current.close()
        _remove_temp(temp)
    store = await Store.open(db_path)
    try:
        stats = await catch_up.finish(redis, settings.keys, store, on_page=on_page)
    finally:
        await store.close()
    replayed = 0 if stats is None else stats.entries  # None: a consumer finished it (--force)
    logger.info("restored backup {} and replayed {} entries from {}",
                backup_id or path.name, replayed, start)
    return RestoreResult(backup_id, safety_id, start, replayed, gap)


def _ms_bound(started_at: str) -> str:
    """Rows from before safe points were recorded: replay from the backup's start time."""
    moment = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    return f"{int(moment.timestamp() * 1000)}-0"
