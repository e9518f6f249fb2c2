"""Fenced, renewing locks on Redis (SPEC section 6).

    async with Lock(redis, keys, "backup", ttl=300) as lock:
        ...                       # lock.token is the fencing token to record at commit
        lock.check()              # raises LockError once the lock is lost

`wks:lock:{name}` holds a random owner token with a TTL (SET NX PX); the same Lua script
INCRs `wks:fence:{name}` and returns the fencing token, so no two holders ever share one.
Release and extend are compare-and-delete / compare-and-pexpire scripts: only the owner can.
While held, a task owned by the Lock renews it every TTL/3 and keeps a monotonic deadline
(the last successful renewal's start + TTL); once renewal fails past that deadline `lost` is
set, and work run through `execute_with_lock` is cancelled. Tokens live on the Lock object,
never in global or task-shared state, so any number of tasks can each hold their own locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from wks import metrics
from wks.errors import LockError
from wks.keys import Keys
from wks.redis import REDIS_DOWN, Backoff

T = TypeVar("T")

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class Lock:
    """One holder's handle on lock `name`; acquire/release it, or use `async with`."""

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, name: str, ttl: float, *, renew: bool = True
    ) -> None:
        if ttl <= 0:
            raise ValueError("a lock needs a positive TTL")
        self.redis = redis
        self.keys = keys
        self.name = name
        self.ttl = ttl
        self.renew = renew
        self.token: int | None = None  # fencing token of the current acquisition
        self.lost = asyncio.Event()
        self._owner: str | None = None
        self._deadline = 0.0
        self._renewer: asyncio.Task[None] | None = None
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)

    @property
    def key(self) -> str:
        return self.keys.lock(self.name)

    @property
    def held(self) -> bool:
        """Acquired, not released, and not past the deadline."""
        return (
            self._owner is not None
            and not self.lost.is_set()
            and time.monotonic() < self._deadline
        )

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def acquire(self, blocking: bool = False, timeout: float | None = None) -> bool:
        """Take the lock; with `blocking`, retry until `timeout` (None: forever)."""
        if self._owner is not None:
            raise LockError(f"lock {self.name!r}: this Lock object already holds it")
        give_up = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff(base=0.02, cap=min(1.0, max(self.ttl / 4, 0.05)))
        contended = False
        while True:
            owner = uuid.uuid4().hex
            started = time.monotonic()
            token = int(await self._acquire(keys=[self.key, self.keys.fence(self.name)],
                                            args=[owner, self.ttl_ms]))
            if token:
                self._owner = owner
                self.token = token
                self._deadline = started + self.ttl
                self.lost = asyncio.Event()
                metrics.LOCK_ACQUIRED.labels(self.name, "acquired").inc()
                if self.renew:
                    self._renewer = asyncio.create_task(self._renew_loop(),
                                                        name=f"lock-renew:{self.name}")
                return True
            if not contended:  # count contention once per acquire, not once per retry
                contended = True
                metrics.LOCK_ACQUIRED.labels(self.name, "busy").inc()
                if blocking:  # say why nothing happens (a holder killed keeps it up to its TTL)
                    left = await self.redis.pttl(self.key)
                    logger.bind(lock=self.name).info(
                        "lock {!r} is held by another holder (expires in {:.1f}s unless "
                        "renewed); waiting{}", self.name, max(int(left), 0) / 1000,
                        "" if timeout is None else f" up to {timeout:g}s")
            if not blocking:
                return False
            delay = backoff.next()
            if give_up is not None:
                left = give_up - time.monotonic()
                if left <= 0:
                    return False
                delay = min(delay, left)
            await asyncio.sleep(delay)

    async def release(self) -> bool:
        """Let go; True when the lock was still ours (a lost lock is left to its new owner)."""
        owner, self._owner = self._owner, None
        await self._stop_renewer()
        if owner is None or self.lost.is_set():
            return False  # a lost lock has expired or belongs to someone else: leave it
        try:
            # bounded: a stalled Redis must not hold the caller; the TTL frees the key anyway
            return bool(await asyncio.wait_for(
                self._release(keys=[self.key], args=[owner]), timeout=max(self.ttl, 1.0)))
        except (TimeoutError, *REDIS_DOWN) as exc:
            logger.bind(lock=self.name).warning("release failed ({}); the TTL will free it", exc)
            return False

    async def extend(self) -> bool:
        """Reset the TTL if the lock is still ours; moves the deadline forward."""
        if self._owner is None:
            return False
        started = time.monotonic()
        ok = bool(await self._extend(keys=[self.key], args=[self._owner, self.ttl_ms]))
        if ok:
            self._deadline = started + self.ttl
        return ok

    def check(self) -> None:
        """Raise LockError unless the lock is still held (call before each step of work)."""
        if not self.held:
            raise LockError(f"lock {self.name!r} (fencing token {self.token}) was lost")

    async def current_fence(self) -> int:
        """The newest fencing token handed out for this name (compare with `token`)."""
        value = await self.redis.get(self.keys.fence(self.name))
        return int(value or 0)

    async def _renew_loop(self) -> None:
        log = logger.bind(lock=self.name, fencing_token=self.token)
        every = self.ttl / 3
        while True:
            await asyncio.sleep(max(0.0, min(every, self._deadline - time.monotonic())))
            left = self._deadline - time.monotonic()
            try:
                # a stalled Redis must not keep the renewal waiting past the deadline
                if await asyncio.wait_for(self.extend(), timeout=max(left, 0.01)):
                    continue
                log.warning("lock taken over by another holder")
            except TimeoutError:
                log.error("renewal unanswered until the deadline")
            except (*REDIS_DOWN, ResponseError) as exc:
                if time.monotonic() < self._deadline:
                    log.warning("renewal failed ({}); retrying before the deadline", exc)
                    await asyncio.sleep(min(every / 4, 0.5))
                    continue
                log.error("renewal failed past the deadline: {}", exc)
            metrics.LOCK_LOST.labels(self.name).inc()
            self.lost.set()
            return

    async def _stop_renewer(self) -> None:
        task, self._renewer = self._renewer, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Lock:
        if not await self.acquire():
            raise LockError(f"lock {self.name!r} is held by another owner")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


# -- the seed-style helpers -------------------------------------------------------------------


async def lock(
    redis: aioredis.Redis, keys: Keys, name: str, ttl: float, *, renew: bool = False,
    blocking: bool = False, timeout: float | None = None,
) -> Lock | None:
    """Acquire `name`; the held Lock (its `.token` is the fencing token), or None if busy."""
    held = Lock(redis, keys, name, ttl, renew=renew)
    return held if await held.acquire(blocking=blocking, timeout=timeout) else None


async def unlock(held: Lock) -> bool:
    """Release a Lock returned by `lock`; True when it was still ours."""
    return await held.release()


async def is_locked(redis: aioredis.Redis, keys: Keys, name: str) -> bool:
    """Does anyone hold `name` right now?"""
    return bool(await redis.exists(keys.lock(name)))


async def execute_with_lock(
    redis: aioredis.Redis,
    keys: Keys,
    name: str,
    ttl: float,
    fn: Callable[[Lock], Awaitable[T]] | Callable[[], Awaitable[T]],
    *,
    blocking: bool = True,
    timeout: float | None = None,
) -> T:
    """Run `fn` under the lock, renewed while it runs; cancel it and raise LockError if lost.

    `fn` may take the Lock (to record `lock.token` where it commits) or no argument.
    """
    held = Lock(redis, keys, name, ttl)
    if not await held.acquire(blocking=blocking, timeout=timeout):
        raise LockError(f"lock {name!r} is held by another owner")
    work: asyncio.Task[Any] = asyncio.create_task(_call(fn, held))
    lost = asyncio.create_task(held.lost.wait())
    try:
        await asyncio.wait([work, lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if not work.done():  # the lock was lost, or we are being cancelled: stop the work
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        await held.release()
    if work.cancelled():
        raise LockError(f"lock {name!r} (fencing token {held.token}) was lost; work stopped")
    return work.result()  # type: ignore[no-any-return]


async def _call(fn: Callable[..., Awaitable[T]], held: Lock) -> T:
    params = inspect.signature(fn).parameters
    return await (fn(held) if params else fn())
