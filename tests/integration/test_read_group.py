"""Reading a consumer group's entries without redis-py's per-entry reply parsing."""

from __future__ import annotations

import redis.asyncio as aioredis

from wks.redis import read_group


async def _stream(r: aioredis.Redis, prefix: str) -> tuple[str, list[bytes]]:
    stream = f"{prefix}:rg"
    ids = [await r.xadd(stream, {b"event": b'{"n":%d}' % i}) for i in range(3)]
    ids.append(await r.xadd(stream, {b"event": b"x", b"other": b"y"}))
    await r.xgroup_create(stream, "g", id="0")
    return stream, ids


async def test_entries_come_back_as_sent(r: aioredis.Redis, prefix: str) -> None:
    stream, ids = await _stream(r, prefix)
    got = [tuple(e) for e in await read_group(r, "g", "c", stream, count=3)]
    assert got == [(ids[i], [b"event", b'{"n":%d}' % i]) for i in range(3)]
    rest = [tuple(e) for e in await read_group(r, "g", "c", stream, count=10, block_ms=10)]
    assert rest == [(ids[3], [b"event", b"x", b"other", b"y"])]
    assert await read_group(r, "g", "c", stream, count=10, block_ms=10) == []
    pending = await r.xpending(stream, "g")
    assert pending["pending"] == 4  # read through the group, as XREADGROUP


async def test_a_reply_parsed_by_redis_py_gives_the_same_shape(
    r: aioredis.Redis, prefix: str
) -> None:
    """Should a redis-py parse the reply anyway, the entries keep the same shape."""
    stream, ids = await _stream(r, prefix)
    r.set_response_callback(b"XREADGROUP", r.response_callbacks["XREADGROUP"])
    got = [tuple(e) for e in await read_group(r, "g", "c", stream, count=10)]
    assert got == [(ids[i], [b"event", b'{"n":%d}' % i]) for i in range(3)] + [
        (ids[3], [b"event", b"x", b"other", b"y"])]
