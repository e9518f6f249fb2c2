"""Helpers for tests: awaiting conditions that other tasks or processes make true."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Await a condition that another process or task makes true (polls an async predicate)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def reaped(proc: asyncio.subprocess.Process) -> AsyncIterator[asyncio.subprocess.Process]:
    """Yield `proc`; kill it on the way out if it still runs (a test that failed midway)."""
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def without_scripts(server: Any) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    """(admin, limited): clients of a private `server`, the second logged in as a user whose
    ACL refuses scripting (EVAL, EVALSHA, SCRIPT), as some managed services do."""
    admin = aioredis.Redis.from_url(server.url)
    await admin.execute_command(
        "ACL", "SETUSER", "noscripts", "on", ">pw", "~*", "&*", "+@all", "-@scripting")
    limited = aioredis.Redis.from_url(f"redis://noscripts:pw@127.0.0.1:{server.port}/0")
    try:
        yield admin, limited
    finally:
        await limited.aclose()
        await admin.aclose()


@contextlib.asynccontextmanager
async def producer_while_down(
    server: Any, keys: Any, buffer_size: int
) -> AsyncIterator[tuple[Any, aioredis.Redis]]:
    """(producer, client) of a private `server`, then the server stopped: Redis down. The
    client gives up fast (connect 0.5 s, a reply 2 s); the producer buffers `buffer_size`
    events. Both are closed at the end (start the server again first to flush)."""
    from producers.client import Producer

    r = aioredis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=2)
    p = Producer(r, keys, buffer_size=buffer_size)
    server.stop()
    try:
        yield p, r
    finally:
        await p.aclose()
        await r.aclose()
