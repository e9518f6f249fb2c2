"""Fixtures for the fault suite: a rig (private redis-server + workers) per test, the soak's
duration. Soak scenarios carry the `soak` marker and run only with `--soak`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Rig
from wks.redis import RedisServer


@pytest.fixture
async def make_rig(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Build a rig on its own redis-server (kwargs: appendonly, appendfsync, db_dir)."""
    rigs: list[Rig] = []

    async def make(*, db_dir: Path | None = None, claim_idle: float = 1.0, **server: Any) -> Rig:
        work = tmp_path / f"rig-{len(rigs)}"
        work.mkdir()
        db_path = (db_dir or work) / "wks.db"
        rig = Rig(redis_factory(**server), work, f"f{uuid.uuid4().hex[:8]}",
                  claim_idle=claim_idle, db_path=db_path)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.close()


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    """How long the time-bounded soak runs (`--soak-seconds`, with `--soak`)."""
    return float(request.config.getoption("--soak-seconds"))
