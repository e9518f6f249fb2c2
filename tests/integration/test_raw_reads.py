"""Reading stream entries without redis-py's per-entry reply parsing."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import redis.asyncio as aioredis

from wks.redis import fields_dict, read_group, read_range


async def _stream(r: aioredis.Redis, prefix: str) -> tuple[str, list[bytes]]:
    stream = f"{prefix}:rg"
    ids = [await r.xadd(stream, {b"event": b'{"n":%d}' % i}) for i in range(3)]
    ids.append(await r.xadd(stream, {b"event": b"x", b"other": b"y"}))
    await r.xgroup_create(stream, "g", id="0")
    return stream, ids


@pytest.mark.parametrize("protocol", [2, 3])
async def test_entries_come_back_as_sent(
    r: aioredis.Redis, redis_url: str, prefix: str, protocol: int
) -> None:
    """Either protocol: RESP2 replies [[stream, entries]], RESP3 {stream: entries}."""
    stream, ids = await _stream(r, prefix)
    r = aioredis.Redis.from_url(redis_url, protocol=protocol)
    try:
        await _read_all(r, stream, ids)
    finally:
        await r.aclose()


async def _read_all(r: aioredis.Redis, stream: str, ids: list[bytes]) -> None:
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


async def test_ranges_come_back_as_sent_either_way(r: aioredis.Redis, prefix: str) -> None:
    stream, ids = await _stream(r, prefix)
    want = [(ids[i], [b"event", b'{"n":%d}' % i]) for i in range(3)] + [
        (ids[3], [b"event", b"x", b"other", b"y"])]
    assert [tuple(e) for e in await read_range(r, stream, "-", "+", count=10)] == want
    assert [tuple(e) for e in await read_range(r, stream, f"({ids[0].decode()}", "+",
                                              count=2)] == want[1:3]
    r.set_response_callback(b"XRANGE", r.response_callbacks["XRANGE"])
    assert [tuple(e) for e in await read_range(r, stream, "-", "+", count=10)] == want
    assert await read_range(r, f"{prefix}:none", "-", "+", count=10) == []


def test_fields_dict() -> None:
    assert fields_dict([b"event", b"1"]) == {b"event": b"1"}
    assert fields_dict([b"a", b"1", b"b", b"2"]) == {b"a": b"1", b"b": b"2"}


async def test_a_reply_parsed_one_level_deeper_gives_the_same_shape(
    r: aioredis.Redis, prefix: str
) -> None:
    """redis-py's RESP3 parsing gives {stream: [[(id, {field: value}), ...]]}."""
    stream, ids = await _stream(r, prefix)

    def nested(reply: object, **options: object) -> object:
        # the raw reply: a map under RESP3 (redis-py 8's default), a list of pairs under RESP2
        streams = reply.items() if isinstance(reply, dict) else reply
        assert isinstance(streams, Iterable)
        return {name: [[(mid, dict(zip(f[::2], f[1::2], strict=True))) for mid, f in entries]]
                for name, entries in streams}

    r.set_response_callback(b"XREADGROUP", nested)
    got = [tuple(e) for e in await read_group(r, "g", "c", stream, count=10)]
    assert got == [(ids[i], [b"event", b'{"n":%d}' % i]) for i in range(3)] + [
        (ids[3], [b"event", b"x", b"other", b"y"])]
