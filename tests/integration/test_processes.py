"""Whole processes: a consumer killed mid-run, and `wks up` started as a new user would."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from producers.client import Producer
from tests.consumers import state_reader, stored_states
from tests.helpers import reaped, wait_for
from tests.workload import as_dicts, distinct_events, reference, workload
from wks.config import Settings
from wks.keys import GROUP_STATE
from wks.redis import ping
from wks.store import FOLD_BATCH, Store
from wks.stream_stats import group_stats

pytestmark = pytest.mark.slow


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WKS_")}
    env.update({
        "WKS_REDIS_URL": settings.effective_redis_url(),
        "WKS_PREFIX": settings.prefix,
        "WKS_DB_PATH": str(settings.db_path),
        "WKS_CLAIM_IDLE": "500ms",
        "WKS_LOG_FORMAT": "json",
        "WKS_LOG_LEVEL": "WARNING",
    })
    env.update(extra)
    return env


async def test_killed_consumer_loses_nothing_and_counts_nothing_twice(
    settings: Settings, r: aioredis.Redis
) -> None:
    """SIGKILL a consumer process mid-run: the survivor claims its entries; state is exact."""
    keys = settings.keys
    rnd = random.Random(99)
    # more than one batch (FOLD_BATCH) waiting at the start, so that the worker has read a
    # second batch while it commits the first: the kill then finds entries pending
    first = 2 * FOLD_BATCH + 500
    events = workload(first + 10_000, 1000, rnd)
    rnd.shuffle(events)
    producer = Producer(r, keys)
    published = []
    ids = await producer.publish_many(events[:first])
    assert ids is not None
    published += list(zip(events[:first], ids, strict=True))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli.__main__", "worker", "--group", "state",
        env=worker_env(settings), stderr=asyncio.subprocess.DEVNULL,
    )
    async with reaped(proc):
        async with await Store.open(settings.db_path) as store:
            async def mid_batch() -> bool:
                applied = await store.scalar("SELECT COUNT(*) FROM event_log")
                stats = await group_stats(r, keys.workflow_stream, GROUP_STATE)
                return bool(applied) and stats is not None and stats["pending"] > 0

            await wait_for(mid_batch, 60, "the worker to be mid-run")
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
            left = (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"]
            ids = await producer.publish_many(events[first:])
            assert ids is not None
            published += list(zip(events[first:], ids, strict=True))

            survivor = state_reader(settings, r, store, claim_idle=0.5)
            await survivor.run(asyncio.Event())
            assert left > 0, "the kill left entries pending"
            assert survivor.status.claimed >= left
            assert await stored_states(store) == as_dicts(reference(published))
            logged = await store.scalar("SELECT COUNT(*) FROM event_log")
            assert logged == len(distinct_events(published))
        assert (await r.xpending(keys.workflow_stream, GROUP_STATE))["pending"] == 0


def test_wks_up_on_a_fresh_machine_takes_an_emit_from_another_shell(tmp_path: Path) -> None:
    """No Redis on PATH, no settings: `wks up` runs the bundled server; `wks emit` reaches it."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {"PATH": str(empty_bin), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "WKS_LOG_FORMAT": "json"}
    wks = [sys.executable, "-m", "wks.cli.__main__"]
    up = subprocess.Popen([*wks, "up"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    url_file = tmp_path / "var" / "redis.url"
    try:
        asyncio.run(wait_for(url_file.exists, 60, "wks up to write var/redis.url"))
        url = url_file.read_text().strip()
        emit = subprocess.run(
            [*wks, "emit", "workflow.started", "--execution-id", "first-run",
             "--workflow-id", "hello", "--total-steps", "2", "--owner", "me"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert emit.returncode == 0, emit.stderr
        entry_id = emit.stdout.strip().splitlines()[-1]
        assert entry_id.split("-")[0].isdigit()

        async def mirrored() -> dict[bytes, bytes]:
            r = aioredis.Redis.from_url(url)
            try:
                return await r.hgetall("wks:workflow:first-run")
            finally:
                await r.aclose()

        state = asyncio.run(wait_for(mirrored, 60, "the mirror hash"))
        assert state[b"status"] == b"running"
        assert state[b"workflowId"] == b"hello"
        assert state[b"totalSteps"] == b"2"
        assert (tmp_path / "var" / "workstation.db").exists()
        assert (tmp_path / "var" / "redis").is_dir()  # the managed server's data (AOF)
    finally:
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=30)
    assert up.returncode == 0, err[-2000:]
    assert "managed" in out
    assert not url_file.exists(), "wks up removes the URL file of the server it stopped"
    host, port = url.split("//")[1].split("/")[0].split(":")
    assert not ping(host, int(port)), "the managed server stopped with wks up"
