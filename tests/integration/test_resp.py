"""The lean connection (`wks.resp.Mux`) against real servers: order, errors, set-up,
restarts, timeouts, cancellation, and the clients that cannot use it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    DataError,
    NoScriptError,
    OutOfMemoryError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.helpers import wait_for
from wks.redis import (
    REDIS_DOWN,
    Client,
    RedisServer,
    client,
    free_port,
    read_group,
    run_script,
    scripts_refused,
)
from wks.resp import Mux, pack

pytestmark = pytest.mark.both_redis


def test_pack_writes_resp_bulk_strings() -> None:
    assert pack(("SET", b"k", 12, 1.5)) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n1.5\r\n")
    with pytest.raises(DataError, match="NoneType"):
        pack(("GET", None))
    with pytest.raises(DataError, match="bool"):  # as redis-py refuses it
        pack(("SET", "k", True))


async def test_calls_in_flight_are_answered_in_order(r: Client, prefix: str) -> None:
    """500 calls sent before any reply is read: each gets its own reply."""
    mux = r.mux
    assert mux is not None
    key = f"{prefix}:counter"
    replies = await asyncio.gather(*[mux.call("INCR", key) for _ in range(500)])
    assert replies == list(range(1, 501))
    assert await mux.call("GET", key) == b"500"
    assert await mux.call("HSET", f"{prefix}:h", "a", 1, "b", b"\x00\xff") == 2
    assert await mux.call("HGETALL", f"{prefix}:h") == [b"a", b"1", b"b", b"\x00\xff"]


async def test_error_replies_are_redis_py_exceptions(r: Client, prefix: str) -> None:
    """Error replies raise what redis-py raises, and the connection stays in step."""
    mux = r.mux
    assert mux is not None
    key = f"{prefix}:s"
    await mux.call("SET", key, "x")
    with pytest.raises(NoScriptError):
        await mux.call("EVALSHA", "0" * 40, 0)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await mux.call("XADD", key, "*", "f", "v")
    assert await mux.call("GET", key) == b"x"


async def test_run_script_loads_a_flushed_script_on_the_lean_connection(
    redis_url: str,
) -> None:
    r = client(redis_url)
    script = r.register_script("return {KEYS[1], ARGV[1]}")
    try:
        assert await run_script(script, ["k"], ["a"]) == [b"k", b"a"]
        await r.script_flush()
        assert await run_script(script, ["k"], ["b"]) == [b"k", b"b"]
    finally:
        await r.aclose()


async def test_user_password_and_database(
    redis_factory: Callable[..., RedisServer], prefix: str
) -> None:
    """AUTH with an ACL user and SELECT of the URL's database come before the first call;
    a wrong password is redis-py's AuthenticationError (a ConnectionError, so: Redis down)."""
    server = redis_factory(appendonly=False)
    admin = aioredis.Redis.from_url(server.url)
    await admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all")
    r = client(f"redis://app:pw@127.0.0.1:{server.port}/2")
    bad = client(f"redis://app:nope@127.0.0.1:{server.port}/0")
    try:
        assert r.mux is not None
        await r.mux.call("SET", f"{prefix}:db", "two")
        await admin.execute_command("SELECT", 2)
        assert await admin.get(f"{prefix}:db") == b"two"
        assert bad.mux is not None
        with pytest.raises(AuthenticationError):
            await bad.mux.call("PING")
        assert issubclass(AuthenticationError, REDIS_DOWN)
    finally:
        await r.aclose()
        await bad.aclose()
        await admin.aclose()


async def test_a_restarted_server_is_reconnected_to(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """The connection dies with its server; the next call goes out on a new one."""
    server = redis_factory(appendonly=False)
    r = client(server.url)
    try:
        assert r.mux is not None
        assert await r.mux.call("PING") == b"PONG"
        server.stop()
        with pytest.raises(REDIS_DOWN):
            await r.mux.call("PING")
        server.start()
        assert await r.mux.call("PING") == b"PONG"
    finally:
        await r.aclose()


async def test_no_server_is_a_connection_error() -> None:
    mux = Mux("127.0.0.1", free_port(), connect_timeout=1.0)
    with pytest.raises(RedisConnectionError, match="Error connecting"):
        await mux.call("PING")


async def test_a_late_reply_is_a_timeout_and_the_next_call_works(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """A server that stops answering: the waiting call fails with redis-py's TimeoutError
    after the socket timeout, and once it answers again a new connection serves."""
    server = redis_factory(appendonly=False)
    mux = Mux("127.0.0.1", server.port, timeout=0.3)
    try:
        assert await mux.call("PING") == b"PONG"
        server.pause()
        try:
            with pytest.raises(RedisTimeoutError, match="no reply"):
                await mux.call("PING")
        finally:
            server.resume()
        assert await mux.call("ECHO", "back") == b"back"
    finally:
        mux.close()


async def test_a_cancelled_call_does_not_shift_the_replies(
    redis_factory: Callable[..., RedisServer], prefix: str
) -> None:
    """A caller that gives up leaves its reply to be dropped, not handed to the next."""
    server = redis_factory(appendonly=False)
    mux = Mux("127.0.0.1", server.port)
    try:
        await mux.call("SET", f"{prefix}:a", "A")
        server.pause()
        try:
            waiting = asyncio.ensure_future(mux.call("GET", f"{prefix}:a"))
            await asyncio.sleep(0)  # one turn: the task sends it
            link: Any = mux._link
            assert len(link.pending) == 1
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            server.resume()
        assert await mux.call("ECHO", "mine") == b"mine"
        assert mux._link is link  # the same connection, still in step
        assert not link.closed
    finally:
        mux.close()


async def test_non_blocking_reads_use_it_and_blocking_reads_do_not(
    redis_url: str, prefix: str
) -> None:
    """XREADGROUP without BLOCK goes over the lean connection, in the raw shape."""
    r = client(redis_url)
    stream = f"{prefix}:stream"
    try:
        await r.xgroup_create(stream, "g", id="0", mkstream=True)
        await r.xadd(stream, {"event": b"{}"})
        got = await read_group(r, "g", "c", stream, count=10)
        assert [fields for _, fields in got] == [[b"event", b"{}"]]
        assert await read_group(r, "g", "c", stream, count=10, block_ms=10) == []
    finally:
        await r.delete(stream)
        await r.aclose()


@pytest.mark.parametrize("url", ["unix:///tmp/wks-none.sock", "rediss://127.0.0.1:6390/0"])
def test_clients_it_cannot_follow_get_none(url: str) -> None:
    """TLS and unix sockets stay on redis-py."""
    assert client(url).mux is None


async def test_closing_the_client_closes_it(redis_url: str) -> None:
    r = client(redis_url)
    mux = r.mux
    assert mux is not None
    await mux.call("PING")
    link: Any = mux._link
    await r.aclose()
    await asyncio.sleep(0)  # the transport reports the close on the loop's next turn
    assert link.closed


async def test_a_reader_blocks_on_its_own_connection(
    settings: Any, redis_url: str, tmp_path: Any
) -> None:
    """While a consumer waits in XREADGROUP BLOCK, the client's shared lean connection
    still answers at once (the blocking read has a connection of its own), and an event
    published meanwhile is read by that blocked read and folded."""
    from producers.client import Producer
    from tests.consumers import state_reader
    from wks.store import Store

    r = client(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    stop = asyncio.Event()
    try:
        async with await Store.open(tmp_path / "mux.db") as store:
            reader = state_reader(settings, r, store, burst=False, block_ms=5000)
            task = asyncio.create_task(reader.run(stop))

            async def blocked() -> bool:
                clients = await admin.client_list()
                return any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
                           for c in clients)

            await wait_for(blocked, what="the reader blocked in XREADGROUP")
            assert r.mux is not None
            async with asyncio.timeout(2):  # not held up behind the 5 s BLOCK
                assert await r.mux.call("PING") == b"PONG"
            await Producer(r, settings.keys).completed("mux-1", ts=5)
            await wait_for(lambda: reader.status.applied == 1, what="the event folded")
            state = await store.get_state("mux-1")
            assert state is not None
            assert state.status == "completed"
            stop.set()
            await wait_for(blocked, what="the reader blocked again")
            await Producer(r, settings.keys).completed("mux-2", ts=6)  # ends the wait
            await task
    finally:
        await r.aclose()
        await admin.aclose()


async def test_an_error_reply_redis_py_counts_as_a_connection_error_keeps_the_connection(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """NOAUTH is an AuthenticationError (a ConnectionError to redis-py), but the connection
    is fine: the calls in flight on it each get their own error, none is sent again, and
    the connection stays."""
    server = redis_factory(appendonly=False)
    admin = aioredis.Redis.from_url(server.url)
    await admin.config_set("requirepass", "pw")
    mux = Mux("127.0.0.1", server.port)  # no password
    try:
        with pytest.raises(AuthenticationError):
            await mux.call("PING")
        link: Any = mux._link
        opened = (await admin.info("stats"))["total_connections_received"]
        results = await asyncio.gather(*[mux.call("INCR", "n") for _ in range(3)],
                                       return_exceptions=True)
        assert all(isinstance(r, AuthenticationError) for r in results), results
        assert mux._link is link
        assert not link.closed
        assert (await admin.info("stats"))["total_connections_received"] == opened
    finally:
        mux.close()
        await admin.aclose()


async def test_closing_while_a_connection_is_being_opened_drops_it(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """close() during set-up: the call fails, and the connection, once set up, is closed
    rather than kept by a Mux that was closed."""
    server = redis_factory(appendonly=False)
    admin = aioredis.Redis.from_url(server.url)
    await admin.ping()
    mux = Mux("127.0.0.1", server.port, db=1)
    server.pause()  # the TCP connect completes (the kernel's backlog); SELECT waits
    try:
        call = asyncio.ensure_future(mux.call("PING"))
        await wait_for(lambda: mux._opening is not None, what="the connection being opened")
        mux.close()
    finally:
        server.resume()
    with pytest.raises(RedisConnectionError, match="closed"):
        await call
    assert mux._link is None

    async def only_admin() -> bool:
        return len(await admin.client_list()) == 1

    await wait_for(only_admin, what="the half-opened connection closed")
    assert await mux.call("PING") == b"PONG"  # a later call opens a new one
    mux.close()
    await admin.aclose()


async def test_a_caller_given_up_while_connecting_leaves_nothing_stale(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """A call cancelled while its connection was being set up: later calls still connect,
    and still reconnect once that connection is killed."""
    server = redis_factory(appendonly=False)
    admin = aioredis.Redis.from_url(server.url)
    await admin.ping()
    mux = Mux("127.0.0.1", server.port, db=1)
    server.pause()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await mux.call("PING")
    finally:
        server.resume()
    await wait_for(lambda: mux._link is not None, what="the set-up finished, nobody waiting")
    waiting = asyncio.ensure_future(mux.call("BLPOP", "nothing", "0.3"))

    async def blocked() -> bool:
        return any(c.get("cmd") == "blpop" for c in await admin.client_list())

    await wait_for(blocked, what="the call in flight")
    await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert await waiting is None  # sent again on a new connection, where it timed out
    assert await mux.call("SET", "k", "v") == b"OK"
    await admin.execute_command("SELECT", 1)
    assert await admin.get("k") == b"v"  # database 1 on the new connection too
    mux.close()
    await admin.aclose()


async def test_a_cancelled_blocking_read_takes_nothing_with_it(
    redis_url: str, prefix: str
) -> None:
    """A blocking read given up on closes its connection, so an entry added afterwards
    stays undelivered for the next reader instead of going to a reply nobody reads."""
    r = client(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    stream = f"{prefix}:blocking"
    own = Mux.of(r)
    assert own is not None
    try:
        await r.xgroup_create(stream, "g", id="0", mkstream=True)
        read = asyncio.ensure_future(
            read_group(r, "g", "c", stream, count=10, block_ms=5000, blocking=own))

        async def blocked() -> bool:
            return any(c.get("cmd") == "xreadgroup" for c in await admin.client_list())

        await wait_for(blocked, what="the read blocked")
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        await wait_for(lambda: _not(blocked()), what="the blocked read gone")
        await admin.xadd(stream, {"event": b"{}"})
        assert (await admin.xpending(stream, "g"))["pending"] == 0
        assert [f for _, f in await read_group(r, "g", "c", stream, count=10)] == [
            [b"event", b"{}"]]
    finally:
        own.close()
        await admin.delete(stream)
        await admin.aclose()
        await r.aclose()


async def _not(value: Any) -> bool:
    return not await value


@pytest.mark.parametrize(("error", "refused"), [
    (ResponseError("NOPERM this user has no permissions to run the 'evalsha' command"), True),
    (ResponseError("unknown command 'EVALSHA', with args beginning with: "), True),
    (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), False),
    (ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently "
                   "unable to persist to disk. Commands that may modify the data set are "
                   "disabled, because this instance is configured to report errors during "
                   "writes if RDB snapshotting fails (stop-writes-on-bgsave-error option)."),
     False),
])
def test_scripts_refused_is_about_scripts_only(error: ResponseError, refused: bool) -> None:
    """A full memory or a failing disk refuses every write: retried, not a reason to drop
    the scripts for good."""
    assert scripts_refused(error) is refused
