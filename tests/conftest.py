"""Fixtures: a real Redis per session, a private key prefix and SQLite file per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.redis_servers import has_second_server, redis_binary, session_redis
from wks.config import Settings
from wks.redis import RedisServer, client


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long fault scenarios")
    parser.addoption("--soak-seconds", type=float, default=600.0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak scenarios are opt-in (`--soak`): deselected, not skipped, in the default run."""
    if config.getoption("--soak"):
        return
    soak = [item for item in items if "soak" in item.keywords]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if "soak" not in item.keywords]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_redis` run on the PATH server and on the bundled 6.2 one."""
    if "redis_kind" not in metafunc.fixturenames:
        return
    kinds = ["default"]
    marker = metafunc.definition.get_closest_marker("both_redis")
    if marker and has_second_server():
        kinds.append("bundled")
    metafunc.parametrize("redis_kind", kinds, scope="session")


@pytest.fixture(scope="session")
def redis_session(
    tmp_path_factory: pytest.TempPathFactory, redis_kind: str
) -> Iterator[str]:
    with session_redis(tmp_path_factory.mktemp("redis"), redis_kind) as (url, _server):
        yield url


@pytest.fixture
def redis_url(redis_session: str) -> str:
    return redis_session


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, prefix: str) -> Settings:
    """Settings for one test: a private prefix, SQLite file and backup dir."""
    return Settings(
        redis_url=redis_url,
        redis_url_source="env",
        prefix=prefix,
        db_path=tmp_path / "wks.db",
        backup_dir=tmp_path / "backups",
        var_dir=tmp_path / "var",
        claim_idle=1.0,
        shutdown_grace=5.0,
        jwt_secret="test-secret-" + "x" * 40,
        log_format="json",
    )


@pytest.fixture
def make_settings(settings: Settings) -> Callable[..., Settings]:
    def make(**changes: Any) -> Settings:
        return replace(settings, **changes)

    return make


@pytest.fixture
async def r(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client; every key under this test's prefix is deleted afterwards."""
    conn = client(redis_url)
    yield conn
    try:
        keys = [k async for k in conn.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await conn.delete(*keys)
    finally:
        await conn.aclose()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers (for tests that kill, pause or restart them)."""
    servers: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(redis_binary(), tmp_path / f"redis-{len(servers)}", **kwargs)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.resume()
        server.kill()
