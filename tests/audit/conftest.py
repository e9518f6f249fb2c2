"""Fixtures for the audit, replay, retention and dead-letter tests: the CLI in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.consumers import state_reader
from wks.cli.__main__ import main
from wks.config import Settings
from wks.keys import EVENT_FIELD
from wks.store import Store

Cli = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def wks(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """Run `wks ARGS...` in-process (in a thread: it runs its own event loop)."""
    monkeypatch.setenv("WKS_REDIS_URL", settings.effective_redis_url())
    monkeypatch.setenv("WKS_PREFIX", settings.prefix)
    monkeypatch.setenv("WKS_DB_PATH", str(settings.db_path))
    monkeypatch.setenv("WKS_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("WKS_LOG_LEVEL", "WARNING")

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv), tune_gc=False)  # the session's GC
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def add(
    r: aioredis.Redis, settings: Settings, event: dict[str, Any], entry_id: str = "*",
    stream: str | None = None,
) -> str:
    """XADD one event (as JSON) with an explicit or generated entry id."""
    raw = json.dumps(event).encode()
    mid = await r.xadd(stream or settings.keys.workflow_stream, {EVENT_FIELD: raw}, id=entry_id)
    return mid.decode()


async def fold(settings: Settings, r: aioredis.Redis) -> None:
    """Run the real state consumer until the workflow stream is drained."""
    store = await Store.open(settings.db_path)
    try:
        await state_reader(settings, r, store).run(asyncio.Event())
    finally:
        await store.close()
