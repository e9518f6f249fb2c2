"""Backup routes: admin only, create/list/get/verify/stats/config, ids that try to escape."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from consumers.backup import BackupHandler
from consumers.reader import GroupReader
from tests.backup.conftest import populate
from tests.helpers import wait_for
from wks import backup_job
from wks.config import Settings
from wks.http.app import create_app
from wks.http.auth import mint_token
from wks.keys import GROUP_BACKUP
from wks.liveness import running_consumers
from wks.store import Store


@pytest.fixture
async def api(aiohttp_client: Any, r: aioredis.Redis, settings: Settings) -> TestClient:
    store = await Store.open(settings.db_path)
    await populate(store, 20)
    await store.close()
    return await aiohttp_client(create_app(settings, r))  # type: ignore[no-any-return]


async def _headers(settings: Settings, r: aioredis.Redis, role: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {await mint_token(settings, r, 'ops', role, 600)}"}


@pytest.fixture
async def worker(r: aioredis.Redis, settings: Settings) -> AsyncIterator[None]:
    """A backup consumer running in this process."""
    store = await Store.open(settings.db_path)
    stop = asyncio.Event()
    keys = settings.keys
    reader = GroupReader(r, keys, name="backup", stream=keys.backup_stream, group=GROUP_BACKUP,
                         handler=BackupHandler(store, r, settings), block_ms=100)
    task = asyncio.create_task(reader.run(stop))
    await wait_for(lambda: running_consumers(r, keys, GROUP_BACKUP), 10, "the worker")
    yield
    stop.set()
    await task
    await store.close()


async def test_backup_routes_are_admin_only(api: TestClient, r: aioredis.Redis,
                                            settings: Settings):
    """A user token gets 403 and no token 401 on every backup route."""
    user = await _headers(settings, r, "user")
    for method, path in (("GET", "/api/backups"), ("POST", "/api/backups?wait=0"),
                         ("GET", "/api/backups/stats"), ("GET", "/api/backups/config"),
                         ("GET", "/api/backups/1"), ("POST", "/api/backups/1/verify")):
        resp = await api.request(method, path, headers=user)
        assert resp.status == 403, path
        assert (await api.request(method, path)).status == 401, path
    assert await r.xlen(settings.keys.backup_stream) == 0  # nothing was requested


@pytest.mark.usefixtures("worker")
async def test_create_list_get_verify_and_stats(api: TestClient, r: aioredis.Redis,
                                                settings: Settings):
    """POST answers 201 with the finished backup, which list, get, verify and stats show."""
    admin = await _headers(settings, r)
    resp = await api.post("/api/backups?wait=20", headers=admin)
    assert resp.status == 201, await resp.text()
    backup = (await resp.json())["backup"]
    assert backup["status"] == "completed"
    assert backup["fileName"].startswith("workstation-backup-")
    assert str(settings.backup_dir) not in await resp.text()  # a name, never a server path
    listing = await (await api.get("/api/backups", headers=admin)).json()
    assert listing["count"] == 1
    assert listing["backups"][0]["id"] == backup["id"]
    assert listing["statistics"]["totalBackups"] == 1
    one = await (await api.get(f"/api/backups/{backup['id']}", headers=admin)).json()
    assert one["backup"]["checksum"] == backup["checksum"]
    verdict = await (await api.post(f"/api/backups/{backup['id']}/verify",
                                    headers=admin)).json()
    assert verdict == {"success": True, "backupId": backup["id"], "valid": True,
                       "message": "backup is valid", "checks": {
                           "exists": True, "checksum": True, "opens": True, "integrity": True}}
    stats = await (await api.get("/api/backups/stats", headers=admin)).json()
    assert stats["statistics"]["totalSize"] == backup["fileSizeBytes"]
    assert stats["statistics"]["failedBackups"] == 0


@pytest.mark.usefixtures("worker")
async def test_create_takes_an_optional_backup_type(api: TestClient, r: aioredis.Redis,
                                                    settings: Settings):
    """A body may name the backupType (manual without one); an unknown type is a 400 and
    requests nothing."""
    admin = await _headers(settings, r)
    for body in ({"backupType": "weird"}, ["manual"], {"backupType": {}}, {"backupType": []},
                 {"backupType": ""}, {"backupType": 0}, {"backupType": False}):
        resp = await api.post("/api/backups?wait=0", headers=admin, json=body)
        assert resp.status == 400
        assert (await resp.json())["success"] is False
    assert await r.xlen(settings.keys.backup_stream) == 0
    resp = await api.post("/api/backups?wait=20", headers=admin,
                          json={"backupType": "pre-migration"})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["backup"]["backupType"] == "pre-migration"


@pytest.mark.usefixtures("worker")
async def test_a_waiter_whose_backup_was_rotated_away_still_gets_its_201(
        api: TestClient, r: aioredis.Redis, settings: Settings):
    """With maxBackups 1, each backup rotates the one before away, often before its waiter
    has seen its row: the waiter finds the outcome on the results stream and answers 201
    with the backup as it was, instead of waiting out its time and answering 202."""
    admin = await _headers(settings, r)
    assert (await api.put("/api/backups/config", headers=admin,
                          json={"maxBackups": 1})).status == 200
    answers = await asyncio.gather(*(
        api.post("/api/backups?wait=20", headers=admin) for _ in range(6)))
    assert [resp.status for resp in answers] == [201] * 6
    backups = [(await resp.json())["backup"] for resp in answers]
    assert len({b["id"] for b in backups}) == 6
    assert {b["status"] for b in backups} == {"completed"}
    assert all(b["fileName"].startswith("workstation-backup-") and b["checksum"]
               for b in backups)
    listing = await (await api.get("/api/backups", headers=admin)).json()
    assert [b["id"] for b in listing["backups"]] == [max(b["id"] for b in backups)]


async def test_create_without_a_worker_answers_202_at_once(api: TestClient, r: aioredis.Redis,
                                                           settings: Settings):
    """With no backup worker running the request is queued and answered 202 with its id."""
    resp = await api.post("/api/backups", headers=await _headers(settings, r))
    assert resp.status == 202
    body = await resp.json()
    entries = await r.xrange(settings.keys.backup_stream)
    assert len(entries) == 1
    assert body["requestId"].encode() in entries[0][1][b"event"]


async def test_config_round_trip_and_validation(api: TestClient, r: aioredis.Redis,
                                                settings: Settings):
    """PUT stores valid changes for every worker; bad values answer 400 and change nothing."""
    admin = await _headers(settings, r)
    resp = await api.put("/api/backups/config", headers=admin,
                         json={"autoBackupEnabled": True, "autoBackupInterval": 60000})
    assert resp.status == 200
    assert (await resp.json())["config"]["autoBackupInterval"] == 60000
    for bad in ({"maxBackups": 0}, {"compression": "rar"}, {"autoBackupInterval": "soon"},
                {"nope": 1}, [1]):
        resp = await api.put("/api/backups/config", headers=admin, json=bad)
        assert resp.status == 400, bad
    resp = await api.put("/api/backups/config", headers=admin, data=b"{not json")
    assert resp.status == 400
    config = (await (await api.get("/api/backups/config", headers=admin)).json())["config"]
    assert config == {"autoBackupEnabled": True, "autoBackupInterval": 60000,
                      "maxBackups": settings.max_backups, "compression": settings.compression}
    assert (await backup_job.read_config(r, settings)).autoBackupEnabled


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


async def test_path_traversal_on_ids_gets_400_or_404_and_touches_nothing(
    api: TestClient, r: aioredis.Redis, settings: Settings, tmp_path: Path
):
    """Ids that are not plain integers (traversal, encodings, names) answer 400/404 and
    neither read nor change any file."""
    admin = await _headers(settings, r)
    store = await Store.open(settings.db_path)
    try:
        row = await backup_job.locked_backup(store, r, settings)
    finally:
        await store.close()
    secret = tmp_path / "secret.db"
    secret.write_bytes(b"do not touch")
    before = await asyncio.to_thread(_snapshot, settings.backup_dir)
    attempts = ["..", "..%2F..%2Fsecret.db", "%2e%2e%2fsecret.db", "1%2F..%2F..%2Fsecret.db",
                "..%5C..%5Csecret.db", Path(row["file_path"]).name, "0", "-1", "1.0", "01",
                "1e3", "99999999999999999999999", "%00", "1%00", "..;", "%252e%252e"]
    for attempt in attempts:
        for method, path in (("GET", f"/api/backups/{attempt}"),
                             ("POST", f"/api/backups/{attempt}/verify")):
            resp = await api.request(method, path, headers=admin)
            assert resp.status in (400, 404), (method, attempt, resp.status)
            text = await resp.text()
            assert "do not touch" not in text
            assert str(tmp_path) not in text
    assert (await api.get("/api/backups/../../secret.db", headers=admin)).status in (400, 404)
    assert await asyncio.to_thread(_snapshot, settings.backup_dir) == before
    assert secret.read_bytes() == b"do not touch"
