"""A lean connection for the hot paths' short Redis calls, many in flight at once.

redis-py's asyncio command path costs ~120-170 us of CPU a call on this kind of machine
(pool checkout, retry wrapper, stream reader and writer, observability hooks), and the hot
paths pay it per request or per batch: the API's session check, the consumer's mirror and
XACK, the producer's append. `Mux` writes calls on one connection of its own from an
asyncio Protocol, parses replies with hiredis and matches them to calls in order (Redis
answers one connection's commands in the order sent): ~40 us a call one at a time, ~14 us
with 16 in flight (ECHO of 100 bytes, CPU of the calling process).

Only for short calls: a blocking command (XREADGROUP BLOCK) would hold up every call behind
it, so those stay on redis-py. Only plain TCP (`redis://`, with user, password and db): for
TLS, unix sockets or a credential provider `Mux.of` returns None and callers use redis-py.
Errors look like redis-py's: error replies go through its parser's table (NoScriptError,
NoPermissionError, ...); a lost connection is its ConnectionError, a reply later than the
socket timeout its TimeoutError (the connection is dropped). A call on a connection that
turns out to be dead (a Redis restarted since) is sent once more on a new one (redis-py
retries a failed call too, up to three times with backoff); an error reply never drops the
connection, even one redis-py counts as a connection error (LOADING, NOAUTH).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError


def _arg(value: Any) -> bytes:
    """Any argument but bytes and str, which `pack` takes as they are."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    raise DataError(f"cannot send {type(value).__name__} to Redis (as redis-py refuses it)")


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for value in args:
        kind = value.__class__
        data = value if kind is bytes else value.encode() if kind is str else _arg(value)
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


class _Closed(RedisConnectionError):
    """The Mux was closed by its owner: a call that fails with this is not sent again."""


class _Link(asyncio.Protocol):
    """One connection: calls go out in order, replies resolve them in order."""

    def __init__(self, timeout: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.closed or self.transport is None:
            future.set_exception(RedisConnectionError("connection to Redis closed"))
            return future
        self.transport.write(pack(args))
        self.pending.append((future, self.loop.time()))
        if self._timer is None and self.timeout:
            self._timer = self.loop.call_later(self.timeout, self._check)
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        try:
            while (reply := self.reader.gets()) is not False:
                future = pending.popleft()[0]
                if future.done():  # its caller was cancelled: the reply is dropped
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply unasked for
            self.fail(RedisConnectionError, f"bad reply from Redis: {exc}")

    def _check(self) -> None:
        """The oldest call waited longer than the socket timeout: drop the link."""
        self._timer = None
        if not self.pending or self.closed:
            return
        assert self.timeout is not None
        waited = self.loop.time() - self.pending[0][1]
        if waited >= self.timeout:
            self.fail(RedisTimeoutError, f"no reply from Redis in {self.timeout:g} s")
        else:
            self._timer = self.loop.call_later(self.timeout - waited, self._check)

    def fail(self, kind: type[Exception], message: str) -> None:
        """Close the link now: every call waiting on it fails with `kind`, at once, and
        nothing more is sent on it."""
        if not self.closed:
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.transport is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: GC closes it
                    self.transport.abort()
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(kind(message))  # one each: tracebacks stay apart

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError, f"connection to Redis lost{f': {exc}' if exc else ''}")


class Mux:
    """Calls to one Redis server over one lean connection (see the module docstring)."""

    def __init__(
        self, host: str, port: int, *, db: int = 0, username: str | None = None,
        password: str | None = None, connect_timeout: float | None = 2.0,
        timeout: float | None = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._link: _Link | None = None
        self._opening: asyncio.Future[_Link] | None = None
        self._generation = 0  # bumped by close(): a connection opened before is dropped

    @classmethod
    def of(cls, r: aioredis.Redis) -> Mux | None:
        """A Mux to the server `r` talks to, or None where it cannot follow (TLS, unix
        socket, a credential provider or anything else but a plain TCP connection)."""
        pool = r.connection_pool
        kw = pool.connection_kwargs
        if pool.connection_class is not aioredis.Connection or kw.get("credential_provider"):
            return None
        return cls(
            kw.get("host", "localhost"), int(kw.get("port", 6379)), db=int(kw.get("db") or 0),
            username=kw.get("username"), password=kw.get("password"),
            connect_timeout=kw.get("socket_connect_timeout"), timeout=kw.get("socket_timeout"),
        )

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (bytes, ints, lists as Redis sent them)."""
        link = self._link
        if link is None or link.closed or link.loop is not asyncio.get_running_loop():
            link = await self._connect()
        try:
            return await link.send(args)
        except _Closed:
            raise
        except RedisConnectionError:
            if not link.closed:
                raise  # an error reply redis-py counts as one (LOADING, NOAUTH): not the link
            # the link died (a Redis restarted, a dropped connection): once more on a new
            # one, as redis-py retries a failed call; like there, a call that ran but whose
            # reply was lost runs twice, which every caller here tolerates (idempotent, or
            # recognised by its eventId)
            link = await self._connect()
            return await link.send(args)

    def close(self) -> None:
        """Drop the connection (and one being opened); calls waiting on it fail. A later
        call opens a new one."""
        self._generation += 1
        link, self._link = self._link, None
        if link is not None:
            link.fail(_Closed, "connection to Redis closed")

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._link
        if link is not None and not link.closed and link.loop is loop:
            return link  # another caller has opened it meanwhile
        opening = self._opening
        if opening is None or opening.done() or opening.get_loop() is not loop:
            opening = self._opening = asyncio.ensure_future(self._open())
            # retrieved even when every caller waiting for it was cancelled
            opening.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(opening)

    async def _open(self) -> _Link:
        generation = self._generation
        loop = asyncio.get_running_loop()
        setup: list[tuple[Any, ...]] = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username
                         else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        link: _Link | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, link = await loop.create_connection(
                    lambda: _Link(self.timeout), self.host, self.port)
                for args in setup:
                    await link.send(args)
        except (OSError, TimeoutError) as exc:
            if link is not None:
                link.fail(RedisConnectionError, "connection set-up failed")
            raise RedisConnectionError(
                f"Error connecting to {self.host}:{self.port}: {str(exc) or 'timed out'}"
            ) from exc
        except BaseException:
            if link is not None:
                link.fail(RedisConnectionError, "connection set-up failed")
            raise
        if generation != self._generation:  # closed while this was being opened
            link.fail(_Closed, "connection to Redis closed")
            raise _Closed("connection to Redis closed")
        old, self._link = self._link, link
        if old is not None and old is not link:
            old.fail(RedisConnectionError, "connection to Redis replaced")
        return link


def mux_of(r: Any) -> Mux | None:
    """The Mux of a client made by `wks.redis.client`, else None (use redis-py)."""
    return getattr(r, "mux", None)
