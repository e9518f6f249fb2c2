"""Per-subject sliding-window rate limit in Redis (SPEC section 8).

One Lua script on the zset `{prefix}:ratelimit:{subject}`: drop members older than the window,
count, admit (ZADD now) or refuse with the time until the oldest member leaves the window.
The clock is the Redis server's (TIME inside the script), so several API processes sharing one
Redis enforce one exact limit between them.

`admit` runs the session check and the limit in one script, so an authenticated request costs
one Redis round trip instead of two. Where that script is refused (an ACL without it, keys in
different cluster slots) the caller falls back to the session check plus `hit`.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from wks.keys import Keys
from wks.redis import run_script

# window(zset, limit, window ms, unique member) -> {allowed, remaining, retry ms}
_WINDOW_FN = """
local function window(key, limit, span, member)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
  local count = redis.call('ZCARD', key)
  if count < limit then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, span)
    return {1, limit - count - 1, 0}
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local retry = span
  if oldest[2] then retry = tonumber(oldest[2]) + span - now end
  return {0, 0, retry}
end
"""
# KEYS[1] = zset; ARGV = limit, window ms, unique member
_SLIDING_WINDOW = _WINDOW_FN + """
return window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
"""
# KEYS[1] = session, KEYS[2] = zset; ARGV = sub, role, now ms, session ttl s, limit, window ms,
# member. A session of another sub or role, or none, answers {-1, 0, 0} and is not counted (it is a
# 401, as with two calls); a live one is touched (only then, so a revoked session is never
# recreated by a request racing the logout) and the subject's request counted.
_SESSION_AND_WINDOW = _WINDOW_FN + """
local who = redis.call('HMGET', KEYS[1], 'sub', 'role')
if who[1] ~= ARGV[1] or who[2] ~= ARGV[2] then return {-1, 0, 0} end
redis.call('HSET', KEYS[1], 'lastSeen', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return window(KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
"""
REFUSED_RETRY = 60.0  # seconds before the one-call script is tried again after a refusal
# a zset member only has to be unique inside one window across processes: a random per-process
# part and a counter do that without a uuid4 (an os.urandom call) per request
_NODE = secrets.token_hex(8)
_SEQ = itertools.count()


def _new_node() -> None:
    global _NODE  # a forked child must not repeat its parent's members
    _NODE = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_node)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining: int
    retry_after_ms: int


class RateLimiter:
    """`limit` requests per `window` seconds per subject."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, limit: int, window: float) -> None:
        self.keys = keys
        self.limit = limit
        self.window_ms = max(1, int(window * 1000))
        self._script = redis.register_script(_SLIDING_WINDOW)
        self._admit = redis.register_script(_SESSION_AND_WINDOW)
        self._refused_until = 0.0  # monotonic time; while in the future, `admit` is skipped

    async def hit(self, subject: str) -> Verdict:
        """Count one request by `subject`; the verdict."""
        allowed, remaining, retry = await self._script(
            keys=[self.keys.ratelimit(subject)],
            args=[self.limit, self.window_ms, f"{_NODE}-{next(_SEQ)}"],
        )
        return Verdict(bool(allowed), int(remaining), max(0, int(retry)))

    @property
    def combined(self) -> bool:
        """Whether `admit` may be tried (not refused by Redis in the last minute)."""
        return time.monotonic() >= self._refused_until

    async def admit(
        self, session_key: str, sub: str, role: str, now_ms: int, ttl: int
    ) -> Verdict | None:
        """Touch the session of `sub` as `role` and count one request, in one round trip.

        None when the session is gone or belongs to another subject or role. Raises ResponseError
        when Redis refuses the script; a refusal that will repeat (no permission, cross-slot
        keys) also turns `combined` off for a minute so callers go straight to two calls.
        """
        try:
            found, remaining, retry = await run_script(
                self._admit, [session_key, self.keys.ratelimit(sub)],
                [sub, role, now_ms, ttl, self.limit, self.window_ms, f"{_NODE}-{next(_SEQ)}"])
        except ResponseError as exc:
            if isinstance(exc, NoPermissionError) or "CROSSSLOT" in str(exc):
                self._refused_until = time.monotonic() + REFUSED_RETRY
            raise
        if int(found) < 0:
            return None
        return Verdict(bool(found), int(remaining), max(0, int(retry)))
