"""SIGKILL of a backup worker at random points: what is on disk and in the log stays sound."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.backup.conftest import ROOT, env_for, populate
from wks import backup as files
from wks import backup_job
from wks import backup_log as log
from wks.config import Settings
from wks.store import Store

_LOOPING_WORKER = textwrap.dedent("""
    import asyncio, os
    from wks.config import Settings
    from wks.redis import client
    from wks.store import Store
    from wks import backup_job

    async def main():
        settings = Settings.load(os.environ)
        r = client(settings.redis_url)
        store = await Store.open(settings.db_path)
        print("ready", flush=True)
        while True:
            await backup_job.locked_backup(store, r, settings)
    asyncio.run(main())
""")


def _complete_database(path: Path, scratch: Path) -> bool:
    plain = path
    if files.compression_of(path) != "none":
        plain = files.temp_path(scratch, files.VERIFY_PREFIX)
        files.decompress(path, plain)
    try:
        return files.integrity(plain) == "ok"
    finally:
        if plain != path:
            plain.unlink()


async def _check(store: Store, settings: Settings, scratch: Path, keep: int) -> None:
    rows = await log.completed(store)
    owned = {Path(r["file_path"]).name for r in rows}
    for row in rows:  # never a completed row without its (valid) file
        verdict = await backup_job.verify_backup(store, settings, row["id"], record=False)
        assert verdict.valid, f"backup {row['id']}: {verdict.message}"
    assert len(rows) >= keep  # rotation never went below maxBackups verified backups
    for name in os.listdir(settings.backup_dir):
        if files.is_backup_name(name) and name not in owned:
            # renamed but not yet recorded when killed: still never a partial file
            assert await asyncio.to_thread(_complete_database, settings.backup_dir / name,
                                           scratch), name


async def test_sigkill_at_random_points_never_leaves_a_partial_or_unbacked_backup(
    r: aioredis.Redis, make_settings, tmp_path: Path
):
    """Killing a backup worker mid-backup (seeded random moments) never leaves a partial file
    under a final name, a completed row without its file, or fewer than maxBackups backups;
    the next backup sweeps what the killed one left."""
    settings = make_settings(max_backups=2, compression="zstd", lock_ttl=1.0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    store = await Store.open(settings.db_path)
    try:
        await populate(store, 4000)
        for _ in range(settings.max_backups):
            await backup_job.locked_backup(store, r, settings)
        rng = random.Random(20261123)
        for _run in range(4):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _LOOPING_WORKER, stdout=asyncio.subprocess.PIPE,
                env=env_for(settings), cwd=ROOT,
            )
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
            await asyncio.sleep(rng.uniform(0.05, 0.8))  # the fault: a random moment
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            await _check(store, settings, scratch, settings.max_backups)
        # the next backup (after the dead holder's lock expired) cleans up after it
        await backup_job.locked_backup(store, r, settings, wait=10)
        await _check(store, settings, scratch, settings.max_backups)
        names = sorted(os.listdir(settings.backup_dir))
        owned = sorted(Path(row["file_path"]).name for row in await log.completed(store))
        assert names == owned
        assert await store.scalar(
            "SELECT count(*) FROM backup_log WHERE status = 'in_progress'") == 0
    finally:
        await store.close()


async def test_a_backup_file_placed_by_hand_is_never_swept(
    r: aioredis.Redis, make_settings, tmp_path: Path
):
    """Cleanup removes only files its own interrupted runs named: an operator's copy stays."""
    settings = make_settings(max_backups=2)
    store = await Store.open(settings.db_path)
    try:
        await populate(store, 50)
        first = await backup_job.locked_backup(store, r, settings)
        copied = settings.backup_dir / "workstation-backup-2020-01-01T00-00-00.db"
        await asyncio.to_thread(shutil.copyfile, first["file_path"], copied)
        for _ in range(3):
            await backup_job.locked_backup(store, r, settings)
        assert copied.exists()
        assert len(await log.completed(store)) == 2  # rotation still keeps maxBackups rows
    finally:
        await store.close()


class _Killed(BaseException):
    """A process dying at this point (not an Exception: nothing handles it)."""


async def test_a_run_killed_between_rotation_commit_and_file_removal_is_swept(
    r: aioredis.Redis, make_settings, monkeypatch
):
    """Rotation commits the deleted rows first and removes their files after: a run dying in
    between leaves files no row names, and the next backup removes them all the same."""
    settings = make_settings(max_backups=1)
    store = await Store.open(settings.db_path)
    try:
        await populate(store, 50)
        first = await backup_job.locked_backup(store, r, settings)

        def killed(paths: list[Path], directory: Path) -> None:
            raise _Killed

        monkeypatch.setattr(files, "remove_files", killed)
        with pytest.raises(_Killed):
            await backup_job.locked_backup(store, r, settings)
        monkeypatch.undo()
        first_name = Path(first["file_path"]).name
        assert first_name in os.listdir(settings.backup_dir)  # its row is gone, its file not yet
        assert first_name not in {
            Path(row["file_path"]).name for row in await log.completed(store)}
        await backup_job.locked_backup(store, r, settings, wait=10)
        names = sorted(os.listdir(settings.backup_dir))
        owned = sorted(Path(row["file_path"]).name for row in await log.completed(store))
        assert names == owned
        assert await log.trash(store) == set()
    finally:
        await store.close()
