"""Fixtures for the backup suite: a populated database, and WKS_* env for child processes."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from wks.config import Settings
from wks.events import StreamEntry, WorkflowProgress, WorkflowStarted, encode
from wks.store import Store

ROOT = Path(__file__).resolve().parents[2]


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `wks` child process use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WKS_")}
    env.update({
        "WKS_REDIS_URL": str(settings.redis_url), "WKS_PREFIX": settings.prefix,
        "WKS_DB_PATH": str(settings.db_path), "WKS_BACKUP_DIR": str(settings.backup_dir),
        "WKS_VAR_DIR": str(settings.var_dir), "WKS_LOG_LEVEL": "WARNING",
        "WKS_LOG_FORMAT": "json", "WKS_CLAIM_IDLE": str(settings.claim_idle),
        "WKS_LOCK_TTL": str(settings.lock_ttl), "WKS_MAX_BACKUPS": str(settings.max_backups),
        "WKS_BACKUP_COMPRESSION": settings.compression, "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


WKS = [sys.executable, "-m", "wks.cli.__main__"]


def started(i: int, ts: int = 1000) -> StreamEntry:
    ev = WorkflowStarted(ts=ts, execution_id=f"e{i}", workflow_id="wf", total_steps=10,
                         data={"i": i})
    return StreamEntry(f"{ts}-{i}", ev, encode(ev))


def progress(i: int, steps: int, ts: int) -> StreamEntry:
    ev = WorkflowProgress(ts=ts, execution_id=f"e{i}", completed_steps=steps)
    return StreamEntry(f"{ts}-{i}", ev, encode(ev))


async def populate(store: Store, n: int, batch: int = 500) -> None:
    """Fold `n` started executions into the store."""
    for start in range(0, n, batch):
        await store.apply_batch([started(i) for i in range(start, min(n, start + batch))])


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = await Store.open(settings.db_path)
    yield s
    await s.close()


@pytest.fixture
def files_in(settings: Settings) -> Callable[[], list[str]]:
    def names() -> list[str]:
        d = settings.backup_dir
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    return names
