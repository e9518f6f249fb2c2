"""Backup routes under failure: no server path in a failed backup's message, a stalled Redis
answers the config read within the API's Redis timeout."""

from __future__ import annotations

import asyncio
import resource
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.backup.conftest import WKS, env_for, populate
from tests.helpers import reaped, wait_for
from tests.http.conftest import bearer
from wks.config import Settings
from wks.http.auth import mint_token
from wks.keys import GROUP_BACKUP
from wks.liveness import running_consumers
from wks.redis import client as redis_client
from wks.store import Store


@pytest.fixture
def relative(make_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with the default, relative paths (`var/workstation.db`), run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    return make_settings(db_path=Path("var/workstation.db"), backup_dir=Path("var/backups"),
                         var_dir=Path("var"))


FSIZE_LIMIT = 1_000_003  # bytes a file of the worker may reach: half the snapshot, not a page


def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails (short, then EFBIG) as on a full
    # disk; the worker's own writes (a few WAL frames) stay far below it
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


@pytest.fixture
async def cramped_worker(r: aioredis.Redis, relative: Settings) -> AsyncIterator[None]:
    """A `wks worker --group backup` process that cannot write a file past FSIZE_LIMIT, over
    a database twice that size."""
    store = await Store.open(relative.db_path)
    await populate(store, 6000)
    await store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    await store.close()
    assert relative.db_path.stat().st_size > 2 * FSIZE_LIMIT
    proc = await asyncio.create_subprocess_exec(
        *WKS, "worker", "--group", "backup", env=env_for(relative), preexec_fn=_limit_file_size)
    async with reaped(proc):
        await wait_for(lambda: running_consumers(r, relative.keys, GROUP_BACKUP), 30,
                       "the worker")
        yield
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.usefixtures("cramped_worker")
async def test_failed_backup_names_the_database_without_its_path(
    make_client, relative, admin, tmp_path
):
    """A snapshot that fails (no room to write it: SQLite says "disk I/O error") answers 500,
    and its message, in the answer and in the log the API lists, names the database by its
    base name only."""
    api = await make_client(relative)
    resp = await api.post("/api/backups?wait=60", headers=admin)
    assert resp.status == 500, await resp.text()
    error = (await resp.json())["error"]
    assert error.startswith("backup failed: snapshot workstation.db: "), error  # no var/
    listing = await (await api.get("/api/backups", headers=admin)).json()
    message = listing["backups"][0]["errorMessage"]
    assert message.startswith("snapshot workstation.db: "), message
    assert str(tmp_path) not in await resp.text()


async def test_config_read_answers_503_quickly_while_redis_is_stalled(
    make_client, settings, redis_factory
):
    """With Redis stopped (SIGSTOP), GET /api/backups/config answers 503 within the API's
    Redis timeout (1 s for the session, 1 s for the read), not the client's socket timeout."""
    server = redis_factory()
    conn = redis_client(server.url)
    try:
        api = await make_client(settings, conn)
        admin = bearer(await mint_token(settings, conn, "root", "admin", 600))
        assert (await api.get("/api/backups/config", headers=admin)).status == 200
        server.pause()
        try:
            started = time.monotonic()
            resp = await asyncio.wait_for(api.get("/api/backups/config", headers=admin), 20)
            elapsed = time.monotonic() - started
        finally:
            server.resume()
        assert resp.status == 503
        assert (await resp.json()) == {
            "success": False, "error": "Redis unreachable: backup config unavailable"}
        assert elapsed < 4, elapsed
    finally:
        await conn.aclose()
