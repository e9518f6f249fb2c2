"""Backups while writers commit, verify catching every corruption, rotation, file modes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sqlite3
import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.backup.conftest import populate, started
from wks import backup as files
from wks import backup_job
from wks import backup_log as log
from wks.config import Settings
from wks.errors import NotFound
from wks.store import Store


async def _backup_of(r: aioredis.Redis, settings: Settings, executions: int) -> dict:
    """The row of a backup of a fresh database holding `executions` executions."""
    store = await Store.open(settings.db_path)
    try:
        await populate(store, executions)
        return await backup_job.locked_backup(store, r, settings)
    finally:
        await store.close()


def _plain(path: Path, scratch: Path) -> Path:
    if files.compression_of(path) == "none":
        return path
    out = scratch / "plain.db"
    out.unlink(missing_ok=True)
    files.decompress(path, out)
    return out


async def test_backup_under_100_commits_a_second_holds_every_earlier_row(
    r: aioredis.Redis, settings: Settings, store: Store, tmp_path: Path
):
    """A backup taken while a writer commits about 100 times a second holds every row
    committed before it started, and a gap-free prefix of the rest (never a torn state)."""
    writer = await Store.open(settings.db_path)
    committed = 0
    stop = asyncio.Event()

    async def write() -> None:
        nonlocal committed
        while not stop.is_set():
            await writer.apply_batch([started(committed + 1)])
            committed += 1
            await asyncio.sleep(0.01)  # pacing: ~100 commits a second

    task = asyncio.create_task(write())
    try:
        await populate(store, 0)
        rows = []
        for _ in range(3):
            await asyncio.sleep(0.2)  # let the writer commit for a while before each backup
            before = committed
            rows.append((before, await backup_job.locked_backup(store, r, settings)))
    finally:
        stop.set()
        await task
        await writer.close()
    assert committed > 10  # the writer really ran alongside
    for before, row in rows:
        path = Path(row["file_path"])
        assert files.verify(path, row["checksum"], tmp_path).valid
        conn = sqlite3.connect(f"file:{_plain(path, tmp_path)}?mode=ro&immutable=1", uri=True)
        ids = sorted(int(e[0][1:]) for e in conn.execute("SELECT execution_id FROM executions"))
        logged = conn.execute("SELECT count(*) FROM event_log").fetchone()[0]
        conn.close()
        assert len(ids) >= before
        assert ids == list(range(1, len(ids) + 1))  # a prefix of the commits: nothing torn
        assert logged == len(ids)


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_verify_detects_every_flipped_byte_and_truncation(
    r: aioredis.Redis, make_settings, tmp_path: Path, compression: str
):
    """Flipping any single byte (many positions) or truncating the file makes verify report
    it invalid, and verify itself never changes the file."""
    row = await _backup_of(r, make_settings(compression=compression), 200)
    await asyncio.to_thread(_corrupt_every_way, Path(row["file_path"]), row["checksum"],
                            tmp_path / "scratch")


def _corrupt_every_way(path: Path, checksum: str, scratch: Path) -> None:
    data = path.read_bytes()
    scratch.mkdir()
    rng = random.Random(4)
    positions = sorted({0, 1, 99, 100, len(data) // 2, len(data) - 1,
                        *rng.sample(range(len(data)), 150)})
    for pos in positions:
        corrupt = bytearray(data)
        corrupt[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(corrupt))
        verdict = files.verify(path, checksum, scratch)
        assert not verdict.valid, f"flipped byte at {pos} not detected"
        assert not verdict.checks["checksum"]
        assert path.read_bytes() == bytes(corrupt)  # verify changed nothing
    for length in (0, 1, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:length])
        assert not files.verify(path, checksum, scratch).valid
    path.write_bytes(data)
    mtime = path.stat().st_mtime_ns
    assert files.verify(path, checksum, scratch).valid
    assert path.read_bytes() == data
    assert path.stat().st_mtime_ns == mtime
    assert list(scratch.iterdir()) == []  # no scratch file left behind


async def test_integrity_is_checked_after_the_checksum(r: aioredis.Redis, settings: Settings,
                                                       store: Store, tmp_path: Path):
    """A file whose checksum matches but whose content is not a sound database is invalid."""
    await populate(store, 10)
    row = await backup_job.locked_backup(store, r, settings)
    path = Path(row["file_path"])
    garbage = b"SQLite format 3\x00" + b"\x00" * 4096
    await asyncio.to_thread(path.write_bytes, garbage)
    verdict = files.verify(path, hashlib.sha256(garbage).hexdigest(), tmp_path)
    assert verdict.checks["checksum"]
    assert not verdict.valid
    await asyncio.to_thread(path.unlink)
    assert not (await backup_job.verify_backup(store, settings, row["id"])).checks["exists"]
    with pytest.raises(NotFound):
        await backup_job.verify_backup(store, settings, 999)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_compressed_backups_round_trip(
    r: aioredis.Redis, make_settings, tmp_path: Path, compression: str
):
    """A compressed backup verifies and decompresses to the same executions."""
    row = await _backup_of(r, make_settings(compression=compression), 50)
    path = Path(row["file_path"])
    assert path.name.endswith(files.SUFFIXES[compression])
    assert files.verify(path, row["checksum"], tmp_path).valid
    conn = sqlite3.connect(_plain(path, tmp_path))
    assert conn.execute("SELECT count(*) FROM executions").fetchone()[0] == 50
    conn.close()


async def test_rotation_keeps_the_newest_and_files_are_private(
    r: aioredis.Redis, make_settings, files_in
):
    """Rotation keeps maxBackups newest completed backups (rows and files); files are 0600
    in a 0700 directory under server-made names."""
    settings = make_settings(max_backups=3)
    store = await Store.open(settings.db_path)
    try:
        await populate(store, 5)
        ids = [(await backup_job.locked_backup(store, r, settings))["id"] for _ in range(5)]
        kept = await log.completed(store)
        stats = await log.stats(store)
    finally:
        await store.close()
    assert [row["id"] for row in kept] == ids[:1:-1]
    assert sorted(Path(row["file_path"]).name for row in kept) == files_in()
    assert stats["totalBackups"] == 3
    assert stat.S_IMODE(os.stat(settings.backup_dir).st_mode) == 0o700
    for name in files_in():
        assert files.is_backup_name(name)
        assert stat.S_IMODE(os.stat(settings.backup_dir / name).st_mode) == 0o600


async def test_runtime_config_validation_and_storage(r: aioredis.Redis, settings: Settings):
    """PUT-style config changes are validated and then honoured through the Redis hash."""
    for bad in ({"maxBackups": 0}, {"autoBackupInterval": 10}, {"compression": "lz4"},
                {"autoBackupEnabled": "yes"}, {"other": 1}, {"maxBackups": True}, []):
        with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
            backup_job.validate_config(bad)
    cfg = await backup_job.write_config(r, settings, backup_job.validate_config(
        {"autoBackupEnabled": True, "autoBackupInterval": 5000, "compression": "gzip"}))
    assert cfg.autoBackupEnabled
    assert cfg.autoBackupInterval == 5000
    assert cfg.maxBackups == settings.max_backups
    assert (await backup_job.read_config(r, settings)).compression == "gzip"
