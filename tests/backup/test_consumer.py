"""The backup group: results on the results stream, idempotent requests, verify commands."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import redis.asyncio as aioredis

from consumers.backup import BackupHandler
from consumers.reader import GroupReader
from tests.backup.conftest import populate
from wks import backup_log as log
from wks.config import Settings
from wks.events import BackupRequested, BackupVerifyRequested, encode
from wks.keys import EVENT_FIELD, GROUP_BACKUP
from wks.store import Store

pytestmark = pytest.mark.both_redis  # scripts and stream commands on 6.2 and 7.x


async def _drain(r: aioredis.Redis, settings: Settings, store: Store) -> None:
    keys = settings.keys
    reader = GroupReader(r, keys, name="backup", stream=keys.backup_stream, group=GROUP_BACKUP,
                         handler=BackupHandler(store, r, settings), burst=True)
    await asyncio.wait_for(reader.run(asyncio.Event()), 60)


async def _results(r: aioredis.Redis, settings: Settings) -> list[dict]:
    rows = await r.xrange(settings.keys.results_stream)
    return [msgspec.json.decode(fields[EVENT_FIELD]) for _id, fields in rows]


async def test_a_redelivered_request_makes_one_backup_and_the_same_result(
    r: aioredis.Redis, settings: Settings, store: Store
):
    """The same requestId twice takes one backup and publishes backup.completed for both."""
    await populate(store, 10)
    for _ in range(2):
        await r.xadd(settings.keys.backup_stream, {EVENT_FIELD: encode(
            BackupRequested(ts=1, request_id="req-1", requested_by="ops"))})
    await _drain(r, settings, store)
    rows = await log.completed(store)
    assert len(rows) == 1
    results = await _results(r, settings)
    assert [e["type"] for e in results] == ["backup.completed", "backup.completed"]
    assert {e["backupId"] for e in results} == {rows[0]["id"]}
    assert all(e["requestId"] == "req-1" for e in results)
    assert all("/" not in e["filePath"] for e in results)  # a name, never a server path


async def test_verify_commands_publish_verdicts(
    r: aioredis.Redis, settings: Settings, store: Store
):
    """backup.verify_requested answers backup.verified: valid for a sound backup, invalid
    (with a reason) for an unknown id."""
    await populate(store, 10)
    stream = settings.keys.backup_stream
    await r.xadd(stream, {EVENT_FIELD: encode(BackupRequested(ts=1, request_id="b"))})
    await _drain(r, settings, store)
    backup_id = (await log.completed(store))[0]["id"]
    for target in (backup_id, 999):
        await r.xadd(stream, {EVENT_FIELD: encode(
            BackupVerifyRequested(ts=2, request_id=f"v{target}", backup_id=target))})
    await _drain(r, settings, store)
    verdicts = {e["backupId"]: e for e in await _results(r, settings)
                if e["type"] == "backup.verified"}
    assert verdicts[backup_id]["valid"] is True
    assert verdicts[backup_id]["checks"]["integrity"] is True
    assert verdicts[999]["valid"] is False
    assert "not found" in verdicts[999]["message"]


async def test_a_backup_directory_that_cannot_be_made_fails_the_request(
    r: aioredis.Redis, settings: Settings, store: Store, tmp_path
):
    """backupDir under a regular file: the request is answered backup.failed, naming the
    directory without its path, recorded as a failed backup (it counts in failedBackups),
    and acknowledged (not retried as if Redis were down)."""
    import dataclasses

    (tmp_path / "a-file").write_text("")
    settings = dataclasses.replace(settings, backup_dir=tmp_path / "a-file" / "bk")
    await populate(store, 3)
    await r.xadd(settings.keys.backup_stream, {EVENT_FIELD: encode(
        BackupRequested(ts=1, request_id="req-nodir"))})
    await _drain(r, settings, store)
    (result,) = await _results(r, settings)
    assert (result["type"], result["requestId"]) == ("backup.failed", "req-nodir")
    assert result["error"].startswith("backup directory bk: ")
    assert str(tmp_path) not in result["error"]
    assert (await r.xpending(settings.keys.backup_stream, GROUP_BACKUP))["pending"] == 0
    rows = await store.fetchall(
        "SELECT status, error_message, request_id, file_path, completed_at FROM backup_log")
    assert [(row[0], row[1], row[2], row[3]) for row in rows] == [
        ("failed", result["error"], "req-nodir", None)]
    assert rows[0][4] is not None
