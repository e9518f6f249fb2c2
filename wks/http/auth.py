"""Authentication: HS256 JWTs bound to a Redis session, so logout revokes (SPEC section 8).

A token carries `sub`, `role` (admin|user), `sid`, `iat` and `exp`. It is accepted when its
signature verifies under the fixed algorithm list ["HS256"] (so `alg: none` and algorithm
confusion are refused), `exp` is present, an integer (as `iat`, if present) and in the future,
and the session `{prefix}:session:{sid}` exists in Redis with the same `sub` and `role` (so a
token re-signed with another role, by someone who has the secret, is still refused: the role
is the session's, set when the token was minted).

While Redis cannot be reached, a read (GET/HEAD) with a token whose signature and expiry
verify is let through with a `Warning` header, because reads come from SQLite and an outage of
the session store must not take them down; revocation is then not checked until Redis is back.
Anything else answers 503 (it would need Redis anyway to publish).

Per request the hot path is one dictionary lookup for an already verified token (`TokenCache`,
`exp` re-checked every time) and one Redis script that checks the session and applies the
rate limit together (`RateLimiter.admit`); where Redis refuses that script it is the session
script and the limiter's own, as two calls.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
import redis.asyncio as aioredis
from aiohttp import web
from loguru import logger
from redis.exceptions import ResponseError

from wks.config import JWT_SECRET_MIN_BYTES, Settings
from wks.http.errors import ApiError
from wks.http.ratelimit import RateLimiter, Verdict
from wks.redis import REDIS_DOWN

ALGORITHMS = ["HS256"]
ROLES = ("admin", "user")
SESSION_TTL = 24 * 3600  # seconds a session lives past its last use (never past `exp`)
REDIS_TIMEOUT = 1.0  # a session lookup must not hang a request when Redis is stalled
MIN_SECRET_BYTES = JWT_SECRET_MIN_BYTES
_DOWN: tuple[type[BaseException], ...] = (*REDIS_DOWN, TimeoutError, ResponseError)
SAFE_METHODS = frozenset({"GET", "HEAD"})
# the largest `exp`/`iat` taken (9999-12-31T23:59:59Z); pyjwt alone would take "17963...",
# 1e300 or a 23-digit integer, and a float or huge integer makes no sense as a time
MAX_CLAIM_TIME = 253_402_300_799
# KEYS[1] = session; ARGV = sub, role, now ms, ttl s. Touches a live session of that sub and
# role only, so a revoked one is never recreated by a request racing the logout.
_TOUCH = """
local who = redis.call('HMGET', KEYS[1], 'sub', 'role')
if who[1] ~= ARGV[1] or who[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'lastSeen', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
DEGRADED_WARNING = '199 wks "session store unreachable: token revocation not checked"'
TOKEN_CACHE_SIZE = 4096  # verified tokens remembered per process (a few hundred KB at most)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made the request."""

    sub: str
    role: str
    sid: str
    exp: int = 0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


PRINCIPAL = web.RequestKey("principal", Principal)  # set by the auth middleware


def new_secret() -> str:
    """A random secret for a run with none configured (`wks up`)."""
    return secrets.token_hex(32)


def check_secret(settings: Settings) -> str:
    """The configured secret, or a one-line error when it is missing or too short."""
    secret = settings.jwt_secret
    if not secret:
        raise ApiError(500, "WKS_JWT_SECRET is not set (use e.g. `openssl rand -hex 32`)")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ApiError(500, f"WKS_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
    return secret


async def mint_token(
    settings: Settings, redis: aioredis.Redis, sub: str, role: str, ttl: float
) -> str:
    """Create the Redis session and return a signed JWT for it."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not sub or len(sub) > 128:
        raise ValueError("sub must be 1..128 characters")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    secret = check_secret(settings)
    now = int(time.time())
    exp = now + max(1, int(ttl))
    sid = uuid.uuid4().hex
    key = settings.keys.session(sid)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"sub": sub, "role": role, "created": str(now * 1000),
                                "lastSeen": str(now * 1000)})
        pipe.expire(key, min(SESSION_TTL, exp - now))
        await pipe.execute()
    claims = {"sub": sub, "role": role, "sid": sid, "iat": now, "exp": exp}
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_token(secret: str, token: str) -> Principal:
    """Verify signature, algorithm and expiry; the claims as a Principal, else ApiError 401."""
    if not token.isascii():
        # a JWS is base64url and dots; a non-UTF-8 header byte arrives as a lone surrogate,
        # which pyjwt's own str.encode() would raise on (a 500 instead of this 401)
        raise ApiError(401, "invalid token")
    try:
        claims = jwt.decode(
            token, secret, algorithms=ALGORITHMS,
            options={"require": ["exp", "sub", "role", "sid"]},
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "token expired") from None
    except jwt.InvalidTokenError:
        raise ApiError(401, "invalid token") from None
    sub, role, sid = claims.get("sub"), claims.get("role"), claims.get("sid")
    if not isinstance(sub, str) or not isinstance(sid, str) or role not in ROLES:
        raise ApiError(401, "invalid token")
    if not all(_claim_time(claims[k]) for k in ("exp", "iat") if k in claims):
        raise ApiError(401, "invalid token")
    return Principal(sub=sub, role=role, sid=sid, exp=int(claims["exp"]))


def _claim_time(value: Any) -> bool:
    """Is `value` a JSON integer of seconds in range (RFC 7519 NumericDate, no fractions)?"""
    return type(value) is int and 0 <= value <= MAX_CLAIM_TIME


class TokenCache:
    """Verified claims by exact token string, so a client's token is verified once, not per call.

    Why this is safe: for a fixed secret, whether a token's signature verifies and what its
    claims are is a pure function of the token's bytes, so the result of verifying a given
    string never changes; only the clock-dependent part does, and `exp` is checked again on
    every use (a cached token past its `exp` is refused as expired, exactly as `decode_token`
    would). The key includes the secret, so an app with another secret never sees an entry.
    Failures are never cached: a forged or garbage token costs a full verification each time
    and cannot evict anything it did not prove valid. Revocation is not a property of the token:
    the Redis session is still checked on every request. The size is bounded (least recently
    used entries leave first), so memory stays flat whatever tokens clients send.
    """

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], Principal] = OrderedDict()

    def verify(self, secret: str, token: str, now: float | None = None) -> Principal:
        """The token's principal, verified now or earlier; ApiError 401 when not valid `now`."""
        key = (secret, token)
        principal = self._entries.get(key)
        if principal is None:
            principal = decode_token(secret, token)  # raises: nothing is stored
            self._entries[key] = principal
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        # pyjwt's rule (expired once now >= exp), re-applied on every use
        if (time.time() if now is None else now) >= principal.exp:
            self._entries.pop(key, None)
            raise ApiError(401, "token expired")
        return principal

    def __len__(self) -> int:
        return len(self._entries)


TOKENS = TokenCache()


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


async def authenticate(
    request: web.Request, settings: Settings, redis: aioredis.Redis,
    limiter: RateLimiter | None = None,
) -> tuple[Principal, bool, Verdict | None]:
    """The request's principal, whether the session store was checked, and the rate-limit verdict.

    With a `limiter` the session check and the rate limit are one Redis script (one round
    trip); the verdict is then returned. It is None when the limit was not applied here (no
    limiter, the script refused, or Redis down), and the caller applies it on its own.
    """
    principal = TOKENS.verify(check_secret(settings), bearer(request))
    key = settings.keys.session(principal.sid)
    now = time.time()
    ttl = max(1, min(SESSION_TTL, principal.exp - int(now)))
    found: Any = None
    verdict: Verdict | None = None
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            if limiter is not None and limiter.combined:
                try:
                    verdict = await limiter.admit(
                        key, principal.sub, principal.role, int(now * 1000), ttl)
                    found = verdict is not None
                except ResponseError as exc:
                    # scripts refused or keys split across slots: the two calls below
                    logger.bind(sub=principal.sub).warning(
                        "one-call session check refused, using two: {}", exc)
            if found is None:
                touch = redis.register_script(_TOUCH)  # EVALSHA, loading it on NOSCRIPT
                found = await touch(
                    keys=[key], args=[principal.sub, principal.role, int(now * 1000), ttl])
    except _DOWN as exc:
        if request.method not in SAFE_METHODS:
            raise ApiError(503, "session store unreachable; retry later") from None
        logger.bind(sub=principal.sub).warning("session check skipped, Redis down: {}", exc)
        return principal, False, None
    if not found:
        raise ApiError(401, "session revoked or expired")
    return principal, True, verdict


async def revoke(settings: Settings, redis: aioredis.Redis, principal: Principal) -> None:
    """Delete the principal's session: its token stops working at once."""
    await redis.delete(settings.keys.session(principal.sid))


def principal_of(request: web.Request) -> Principal:
    """The authenticated principal (set by the auth middleware)."""
    principal = request.get(PRINCIPAL)
    if principal is None:
        raise ApiError(401, "missing bearer token")
    return principal


def require_admin(request: web.Request) -> Principal:
    """The principal when it is an admin; a JSON 403 otherwise."""
    principal = principal_of(request)
    if not principal.is_admin:
        raise ApiError(403, "admin role required")
    return principal


def visible(principal: Principal, owner: Any) -> bool:
    """Ownership: admins see everything, a user only executions it owns."""
    return principal.is_admin or (owner is not None and owner == principal.sub)
