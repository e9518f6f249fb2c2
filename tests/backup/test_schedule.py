"""Scheduled backups: three workers with the schedule on make exactly one backup per interval."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import redis.asyncio as aioredis

from tests.backup.conftest import ROOT, WKS, env_for, populate
from tests.helpers import wait_for
from wks import backup_job
from wks.config import Settings
from wks.store import Store

INTERVAL_MS = 1500  # short, yet longer than a wake-up delay on a busy machine


async def _scheduled(store: Store) -> list[tuple[str, str]]:
    rows = await store.fetchall(
        "SELECT request_id, status FROM backup_log WHERE backup_type = 'scheduled'")
    return [(str(r[0]), str(r[1])) for r in rows]


async def test_three_workers_make_one_backup_per_interval(
    r: aioredis.Redis, settings: Settings, store: Store
):
    """With the schedule enabled through the runtime config, three `wks worker --group backup`
    processes take exactly one scheduled backup per interval: none twice, none skipped."""
    await populate(store, 20)
    await backup_job.write_config(r, settings, {"autoBackupEnabled": True,
                                                "autoBackupInterval": INTERVAL_MS,
                                                "maxBackups": 50})
    procs = [
        await asyncio.create_subprocess_exec(*WKS, "worker", "--group", "backup",
                                             env=env_for(settings), cwd=ROOT)
        for _ in range(3)
    ]
    try:
        async def enough() -> bool:
            done = {rid for rid, status in await _scheduled(store) if status == "completed"}
            return len(done) >= 3

        await wait_for(enough, timeout=60, what="three scheduled backups")
        await backup_job.write_config(r, settings, {"autoBackupEnabled": False})

        async def settled() -> bool:
            requests = await r.xrange(settings.keys.backup_stream)
            rows = await _scheduled(store)
            return len(rows) >= len(requests) and all(s != "in_progress" for _, s in rows)

        await wait_for(settled, timeout=30, what="every scheduled request handled")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
    rows = await _scheduled(store)
    per_request = Counter(rid for rid, _ in rows)
    assert all(status == "completed" for _, status in rows)
    assert all(n == 1 for n in per_request.values()), per_request  # never twice
    slots = sorted(int(rid.rsplit("-", 1)[1]) for rid in per_request)
    assert slots == list(range(slots[0], slots[0] + len(slots)))  # never an interval skipped
    assert all(rid.startswith(f"scheduled-{INTERVAL_MS}-") for rid in per_request)
    requests = await r.xrange(settings.keys.backup_stream)
    assert len(requests) == len(per_request)  # one request per claimed slot
