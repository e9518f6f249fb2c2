"""Fixtures for the HTTP API: an in-process server on a real Redis and SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from consumers.reader import GroupReader
from consumers.state import StateHandler
from producers.client import Producer
from wks.config import Settings
from wks.http.app import create_app
from wks.http.auth import mint_token
from wks.keys import GROUP_STATE
from wks.store import Store

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def producer(r: aioredis.Redis, settings: Settings) -> Producer:
    return Producer(r, settings.keys, buffer_size=0)


@pytest.fixture
def make_client(
    aiohttp_client: Any, r: aioredis.Redis, producer: Producer
) -> MakeClient:
    """Start the app in-process for `settings` (and optionally another Redis client)."""

    async def make(settings: Settings, redis: aioredis.Redis | None = None,
                   **kwargs: Any) -> TestClient[Any, Any]:
        conn = redis or r
        pub = producer if redis is None else Producer(conn, settings.keys, buffer_size=0)
        app = create_app(settings, conn, producer=pub, **kwargs)
        return await aiohttp_client(app)  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def client(make_client: MakeClient, settings: Settings) -> TestClient[Any, Any]:
    return await make_client(settings)


@pytest.fixture
def token(settings: Settings, r: aioredis.Redis) -> Callable[..., Awaitable[str]]:
    async def mint(sub: str = "root", role: str = "admin", ttl: float = 3600.0) -> str:
        return await mint_token(settings, r, sub, role, ttl)

    return mint


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture
async def admin(token: Callable[..., Awaitable[str]]) -> dict[str, str]:
    return bearer(await token("root", "admin"))


@pytest.fixture
def fold(settings: Settings, r: aioredis.Redis) -> Callable[[], Awaitable[None]]:
    """Apply everything published so far: the `state` group in burst mode."""

    async def run() -> None:
        store = await Store.open(settings.db_path)
        try:
            reader = GroupReader(
                r, settings.keys, name="workflow", stream=settings.keys.workflow_stream,
                group=GROUP_STATE, handler=StateHandler(store, r, settings.keys, 3600.0),
                claim_idle=settings.claim_idle, burst=True,
            )
            await reader.run(asyncio.Event())
        finally:
            await store.close()

    return run


async def raw_http(host: str, port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is (bytes no HTTP client would send) and read the whole answer:
    (status, headers, body). The server closes the connection after it (send `Connection:
    close` for a request it would otherwise keep alive)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return int(status_line.split()[1]), headers, body
