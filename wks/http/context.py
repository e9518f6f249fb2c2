"""The application's typed state (`web.AppKey`) and the publisher seam.

Kept apart from `app.py` so route modules can import the keys without importing the
factory that imports them. `wks.http.app` re-exports every name here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
from aiohttp import web

from producers.checks import check_payloads, stream_kind
from wks.config import Settings
from wks.events import BackupRequested, Event, encode, now_ms
from wks.http.ratelimit import RateLimiter
from wks.keys import EVENT_FIELD, Keys
from wks.redis import text
from wks.store import Store

if TYPE_CHECKING:
    from wks.cli.runtime import Runtime


class Publisher(Protocol):
    """What the API needs from a producer."""

    async def publish(self, event: Event, stream: str | None = None) -> str | None: ...

    async def publish_many(
        self, events: Sequence[Event], stream: str | None = None
    ) -> list[str] | None: ...

    async def publish_payloads(
        self, payloads: Sequence[bytes], stream: str | None = None
    ) -> list[str] | None: ...

    async def request_backup(
        self, request_id: str | None = None, *, backup_type: str = "manual",
        requested_by: str | None = None,
    ) -> tuple[str, str | None]: ...


class StreamPublisher:
    """A minimal unbuffered publisher: one MULTI of XADDs per call (used when none is given)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def publish(self, event: Event, stream: str | None = None) -> str | None:
        ids = await self.publish_many([event], stream)
        return ids[0] if ids else None

    async def publish_many(
        self, events: Sequence[Event], stream: str | None = None
    ) -> list[str] | None:
        return await self._xadd(stream, [encode(event) for event in events])

    async def publish_payloads(
        self, payloads: Sequence[bytes], stream: str | None = None
    ) -> list[str] | None:
        """Events' JSON as it is, judged as `Producer.publish_payloads` judges it."""
        target = stream or self.keys.workflow_stream
        check_payloads(payloads, stream_kind(self.keys, target))
        return await self._xadd(target, payloads)

    async def _xadd(self, stream: str | None, payloads: Sequence[bytes]) -> list[str]:
        target = stream or self.keys.workflow_stream
        async with self.redis.pipeline(transaction=True) as pipe:
            for payload in payloads:
                pipe.xadd(target, {EVENT_FIELD: payload})
            raw = await pipe.execute()
        return [text(r) for r in raw]

    async def request_backup(
        self, request_id: str | None = None, *, backup_type: str = "manual",
        requested_by: str | None = None,
    ) -> tuple[str, str | None]:
        rid = request_id or uuid.uuid4().hex
        event = BackupRequested(request_id=rid, backup_type=backup_type,  # type: ignore[arg-type]
                                requested_by=requested_by, ts=now_ms())
        return rid, await self.publish(event, self.keys.backup_stream)


SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", aioredis.Redis)
STORE = web.AppKey("store", Store)
PRODUCER: web.AppKey[Publisher] = web.AppKey("producer")
RUNTIME: web.AppKey[Runtime | None] = web.AppKey("runtime")
SHUTDOWN = web.AppKey("shutdown", asyncio.Event)  # set when the server begins to stop


LIMITER = web.AppKey("limiter", RateLimiter)
OPENAPI_DOC: web.AppKey[dict[str, Any]] = web.AppKey("openapi")
