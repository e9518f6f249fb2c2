"""The `backup_log` table and fenced commits (SPEC sections 6 and 7).

A fenced commit runs in one `BEGIN IMMEDIATE` transaction that first refuses a fencing token
older than the newest one this database has seen for the lock (table `fence`) or than the
newest one Redis has handed out; then it records the token and writes. Because the check and
the write share SQLite's write lock, a holder whose lock expired cannot slip a commit in after
the next holder's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from wks.errors import StaleFencingToken
from wks.store import Store

T = TypeVar("T")

COLUMNS = (
    "id, backup_type, file_path, file_size_bytes, started_at, completed_at, status, "
    "error_message, checksum, request_id, fencing_token, replay_from, verified_at"
)


def iso(moment: datetime | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z, as stored in backup_log."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


def _row(r: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    names = [c.strip() for c in COLUMNS.split(",")]
    return dict(zip(names, r, strict=True))


def public(row: dict[str, Any]) -> dict[str, Any]:
    """The API shape of a row: camelCase, the file's name only (never a server path)."""
    path = row.get("file_path")
    return {
        "id": row["id"],
        "backupType": row["backup_type"],
        "fileName": Path(path).name if path else None,
        "fileSizeBytes": row["file_size_bytes"],
        "startedAt": row["started_at"],
        "completedAt": row["completed_at"],
        "status": row["status"],
        "errorMessage": row["error_message"],
        "checksum": row["checksum"],
        "requestId": row["request_id"],
        "verifiedAt": row["verified_at"],
    }


async def fenced(
    store: Store,
    name: str,
    token: int,
    body: Callable[[aiosqlite.Connection], Awaitable[T]],
    current: Callable[[], Awaitable[int]] | None = None,
) -> T:
    """Run `body` in a write transaction that commits only if `token` is not stale."""
    async with store.transaction("fenced commit") as conn:
        seen = await store.scalar("SELECT token FROM fence WHERE name = ?", (name,))
        if seen is not None and int(seen) > token:
            raise StaleFencingToken(name, token, int(seen))
        if current is not None:
            newest = await current()
            if newest > token:
                raise StaleFencingToken(name, token, newest)
        await conn.execute(
            "INSERT INTO fence (name, token) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET token = max(token, excluded.token)",
            (name, token),
        )
        return await body(conn)


async def start(
    store: Store, backup_type: str, request_id: str | None, token: int | None,
    replay_from: str | None, started_at: str,
) -> int:
    """Insert an `in_progress` row; its id."""
    cur = await store.conn.execute(
        "INSERT INTO backup_log (backup_type, started_at, status, request_id, fencing_token,"
        " replay_from) VALUES (?, ?, 'in_progress', ?, ?, ?)",
        (backup_type, started_at, request_id, token, replay_from),
    )
    return int(cur.lastrowid or 0)


async def set_path(store: Store, backup_id: int, path: Path) -> None:
    """Record the final file name of an in-progress backup before the file is published."""
    await store.conn.execute(
        "UPDATE backup_log SET file_path = ? WHERE id = ? AND status = 'in_progress'",
        (str(path), backup_id),
    )


async def mark_failed(store: Store, backup_id: int, error: str) -> None:
    await store.conn.execute(
        "UPDATE backup_log SET status = 'failed', error_message = ?, completed_at = ?"
        " WHERE id = ? AND status = 'in_progress'",
        (error[:2000], iso(), backup_id),
    )


async def get(store: Store, backup_id: int) -> dict[str, Any] | None:
    rows = await store.fetchall(f"SELECT {COLUMNS} FROM backup_log WHERE id = ?", (backup_id,))
    return _row(rows[0]) if rows else None


async def by_request(store: Store, request_id: str) -> dict[str, Any] | None:
    """The newest finished row of a request (completed or failed), if any."""
    rows = await store.fetchall(
        f"SELECT {COLUMNS} FROM backup_log WHERE request_id = ? AND status != 'in_progress'"
        " ORDER BY (status = 'completed') DESC, id DESC LIMIT 1",
        (request_id,),
    )
    return _row(rows[0]) if rows else None


async def listing(store: Store, limit: int = 1000) -> list[dict[str, Any]]:
    """Newest first."""
    rows = await store.fetchall(
        f"SELECT {COLUMNS} FROM backup_log ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [_row(r) for r in rows]


async def completed(store: Store) -> list[dict[str, Any]]:
    """Completed backups, newest first."""
    rows = await store.fetchall(
        f"SELECT {COLUMNS} FROM backup_log WHERE status = 'completed' ORDER BY id DESC"
    )
    return [_row(r) for r in rows]


async def stats(store: Store) -> dict[str, Any]:
    """totalBackups, totalSize, oldestBackup, newestBackup, failedBackups (completed ones)."""
    rows = await store.fetchall(
        "SELECT count(*), COALESCE(sum(file_size_bytes), 0), min(completed_at),"
        " max(completed_at) FROM backup_log WHERE status = 'completed'"
    )
    failed = await store.scalar("SELECT count(*) FROM backup_log WHERE status = 'failed'")
    total, size, oldest, newest = rows[0]
    return {
        "totalBackups": int(total), "totalSize": int(size), "oldestBackup": oldest,
        "newestBackup": newest, "failedBackups": int(failed or 0),
    }


async def complete_sql(
    conn: aiosqlite.Connection, backup_id: int, path: Path, size: int, checksum: str,
) -> None:
    now = iso()
    await conn.execute(
        "UPDATE backup_log SET status = 'completed', file_path = ?, file_size_bytes = ?,"
        " checksum = ?, completed_at = ?, verified_at = ?, error_message = NULL WHERE id = ?",
        (str(path), size, checksum, now, now, backup_id),
    )


async def rotation_victims(conn: aiosqlite.Connection, keep: int) -> list[tuple[int, str]]:
    """Completed rows beyond the `keep` newest (id, file path), to delete in this transaction."""
    async with conn.execute(
        "SELECT id, file_path FROM backup_log WHERE status = 'completed'"
        " ORDER BY id DESC LIMIT -1 OFFSET ?",
        (keep,),
    ) as cur:
        rows = [(int(r[0]), str(r[1])) for r in await cur.fetchall()]
    if rows:
        marks = ",".join("?" * len(rows))
        await conn.execute(f"DELETE FROM backup_log WHERE id IN ({marks})", [r[0] for r in rows])
        # their files go after the commit; until then the sweep knows them from here
        await conn.executemany("INSERT OR IGNORE INTO backup_trash (file_path) VALUES (?)",
                               [(r[1],) for r in rows])
    return rows


async def trash(store: Store) -> set[str]:
    """Files of rotated backups not deleted yet (a run killed after its commit)."""
    return {str(p) for (p,) in await store.fetchall("SELECT file_path FROM backup_trash")}


async def emptied(store: Store, paths: list[str]) -> None:
    """These files are gone: forget them."""
    await store.conn.executemany("DELETE FROM backup_trash WHERE file_path = ?",
                                 [(p,) for p in paths])
