"""Locks: exclusivity, owner-only release, fencing, renewal, loss (SPEC section 6)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from tests.backup.conftest import ROOT, env_for
from tests.helpers import wait_for
from wks import backup_log
from wks.config import Settings
from wks.errors import LockError, StaleFencingToken
from wks.keys import Keys
from wks.locks import Lock, execute_with_lock, is_locked, lock, unlock
from wks.redis import RedisServer, client
from wks.store import Store

pytestmark = pytest.mark.both_redis  # scripts and stream commands on 6.2 and 7.x


async def test_one_holder_at_a_time_and_tokens_increase(r: aioredis.Redis, settings: Settings):
    """A second Lock cannot take a held lock; each acquisition gets a larger fencing token."""
    keys = settings.keys
    a = Lock(r, keys, "job", ttl=5, renew=False)
    b = Lock(r, keys, "job", ttl=5, renew=False)
    assert await a.acquire()
    assert not await b.acquire()
    assert 0 < await r.pttl(keys.lock("job")) <= 5000  # never a lock without a TTL
    assert await a.release()
    assert await b.acquire()
    assert b.token == a.token + 1  # type: ignore[operator]
    await b.release()


async def test_a_blocked_acquire_says_what_it_waits_for(r: aioredis.Redis, settings: Settings):
    """Waiting for a held lock logs once which lock, when it expires and how long it waits:
    a holder killed with the lock keeps it until its TTL, and a command must not just hang
    in silence meanwhile."""
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{message}")
    try:
        a = Lock(r, settings.keys, "job", ttl=30, renew=False)
        b = Lock(r, settings.keys, "job", ttl=30, renew=False)
        assert await a.acquire()
        assert not await b.acquire(blocking=True, timeout=0.3)
    finally:
        logger.remove(sink)
        await a.release()
    waiting = [line for line in lines if "waiting" in line]
    assert len(waiting) == 1, lines
    assert re.fullmatch(r"lock 'job' is held by another holder \(expires in (29\.\d|30\.0)s "
                        r"unless renewed\); waiting up to 0\.3s", waiting[0].rstrip())


async def test_only_the_owner_releases(r: aioredis.Redis, settings: Settings):
    """Releasing after the lock passed to another owner leaves the new owner's lock alone."""
    keys = settings.keys
    a = Lock(r, keys, "job", ttl=5, renew=False)
    assert await a.acquire()
    await r.delete(keys.lock("job"))  # as if it expired
    b = Lock(r, keys, "job", ttl=5, renew=False)
    assert await b.acquire()
    assert not await a.release()
    assert await is_locked(r, keys, "job")
    assert await b.release()
    assert not await is_locked(r, keys, "job")


async def test_seed_style_helpers(r: aioredis.Redis, settings: Settings):
    """lock / unlock / is_locked / execute_with_lock behave like the seed's helpers."""
    keys = settings.keys
    held = await lock(r, keys, "seed", 5)
    assert held is not None
    assert held.token
    assert await lock(r, keys, "seed", 5) is None
    assert await unlock(held)

    async def work(lk: Lock) -> int:
        assert await is_locked(r, keys, "seed")
        return lk.token or 0

    token = await execute_with_lock(r, keys, "seed", 5, work)
    assert token == held.token + 1  # type: ignore[operator]
    assert not await is_locked(r, keys, "seed")


async def test_long_job_keeps_a_short_ttl_lock(r: aioredis.Redis, settings: Settings):
    """A job lasting several TTLs keeps its lock through renewal; nobody else gets it."""
    keys = settings.keys
    other = Lock(r, keys, "long", ttl=0.3, renew=False)
    ticks = 0

    async def job(lk: Lock) -> str:
        nonlocal ticks
        deadline = asyncio.get_running_loop().time() + 1.2  # four TTLs
        while asyncio.get_running_loop().time() < deadline:
            assert not await other.acquire()
            lk.check()
            ticks += 1
            await asyncio.sleep(0.05)  # pacing the job's own steps
        return "done"

    assert await execute_with_lock(r, keys, "long", 0.3, job) == "done"
    assert ticks > 5


async def test_lost_lock_stops_the_work(r: aioredis.Redis, settings: Settings):
    """When another owner takes the lock, `lost` is set and execute_with_lock cancels the work."""
    keys = settings.keys
    cancelled = asyncio.Event()

    async def job(lk: Lock) -> None:
        await r.set(keys.lock("steal"), "thief", px=10_000)  # someone else owns it now
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(LockError):
        await execute_with_lock(r, keys, "steal", 0.3, job)
    assert cancelled.is_set()
    assert await r.get(keys.lock("steal")) == b"thief"  # the thief's lock was left alone


async def test_async_with_raises_when_busy(r: aioredis.Redis, settings: Settings):
    """`async with Lock(...)` raises LockError instead of running unguarded."""
    async with Lock(r, settings.keys, "ctx", ttl=5) as held:
        assert held.held
        with pytest.raises(LockError):
            async with Lock(r, settings.keys, "ctx", ttl=5):
                pass
    assert not await is_locked(r, settings.keys, "ctx")


async def test_fenced_commit_refuses_an_older_token(store: Store, settings: Settings):
    """The store remembers the newest token it saw and refuses older ones."""
    async def body(conn: object) -> str:
        return "written"

    assert await backup_log.fenced(store, "backup", 5, body) == "written"
    with pytest.raises(StaleFencingToken):
        await backup_log.fenced(store, "backup", 4, body)
    assert await store.scalar("SELECT token FROM fence WHERE name = 'backup'") == 5


_PAUSED_HOLDER = textwrap.dedent("""
    import asyncio, sys
    from wks.config import Settings
    from wks.locks import Lock
    from wks.redis import client
    from wks import backup_log
    from wks.errors import StaleFencingToken
    from wks.store import Store

    async def main():
        settings = Settings.load(__import__("os").environ)
        r = client(settings.redis_url)
        store = await Store.open(settings.db_path)
        lk = Lock(r, settings.keys, "fenced", ttl=0.5)
        assert await lk.acquire()
        print(lk.token, flush=True)
        await asyncio.to_thread(sys.stdin.readline)   # paused here by SIGSTOP

        async def body(conn):
            await conn.execute("INSERT INTO backup_log (started_at, status, fencing_token)"
                               " VALUES ('stale', 'completed', ?)", (lk.token,))
        try:
            await backup_log.fenced(store, "fenced", lk.token, body, lk.current_fence)
            print("committed", flush=True)
        except StaleFencingToken:
            print("refused", flush=True)
        await store.close()
    asyncio.run(main())
""")


async def test_paused_holder_cannot_commit_after_takeover(
    r: aioredis.Redis, settings: Settings, store: Store
):
    """A holder SIGSTOPped past its TTL has its commit refused once another holder took over."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PAUSED_HOLDER, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=env_for(settings), cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        stale_token = int(await proc.stdout.readline())
        os.kill(proc.pid, signal.SIGSTOP)
        keys = settings.keys
        await wait_for(lambda: _gone(r, keys), timeout=10,
                       what="the paused holder's lock to expire")
        new = Lock(r, keys, "fenced", ttl=30)
        assert await new.acquire()
        assert new.token == stale_token + 1
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        answer = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert answer.strip() == b"refused"

        async def body(conn: object) -> None:
            return None

        await backup_log.fenced(store, "fenced", new.token or 0, body, new.current_fence)
        await new.release()
        assert await store.scalar("SELECT count(*) FROM backup_log WHERE started_at = 'stale'") \
            == 0
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        await proc.wait()


async def _gone(r: aioredis.Redis, keys: Keys) -> bool:
    return not await r.exists(keys.lock("fenced"))


async def test_a_stalled_redis_loses_the_lock_at_the_deadline(
    redis_factory: Callable[..., RedisServer], settings: Settings
):
    """With Redis paused, renewal cannot answer: at the monotonic deadline the holder marks
    the lock lost, stops claiming to hold it, and its guarded work is cancelled."""
    server = redis_factory(appendonly=False)
    conn = client(server.url)
    try:
        started = asyncio.Event()

        async def job(lk: Lock) -> None:
            started.set()
            await asyncio.Event().wait()

        work = asyncio.create_task(execute_with_lock(conn, settings.keys, "stall", 0.6, job))
        await asyncio.wait_for(started.wait(), 10)
        server.pause()
        try:
            with pytest.raises(LockError):
                await asyncio.wait_for(work, 10)
        finally:
            server.resume()
    finally:
        await conn.aclose()
