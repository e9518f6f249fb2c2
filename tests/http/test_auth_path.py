"""The authenticated request path: one Redis round trip, verified tokens cached, fallbacks."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from tests.http.conftest import bearer
from wks.http.app import LIMITER
from wks.http.auth import TokenCache, mint_token
from wks.http.errors import ApiError
from wks.redis import client as redis_client

SECRET = "s" * 40
ME = "/auth/me"


def _token(secret: str = SECRET, **claims: object) -> str:
    base = {"sub": "alice", "role": "user", "sid": "x1", "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


def test_cached_token_is_refused_once_past_its_exp():
    """A token verified (and cached) while valid answers 401 "token expired" at its exp."""
    cache = TokenCache()
    tok = _token()
    principal = cache.verify(SECRET, tok)
    assert cache.verify(SECRET, tok, now=principal.exp - 1) == principal
    assert len(cache) == 1
    with pytest.raises(ApiError, match="token expired") as info:
        cache.verify(SECRET, tok, now=principal.exp)
    assert info.value.status == 401
    assert len(cache) == 0


def test_failures_are_never_cached_and_the_secret_is_part_of_the_key():
    """Bad tokens leave nothing behind; a cached token is still refused under another secret."""
    cache = TokenCache()
    for bad in ("garbage", _token(secret="w" * 40), _token(exp=int(time.time()) - 5),
                _token(role="root")):
        with pytest.raises(ApiError):
            cache.verify(SECRET, bad)
    assert len(cache) == 0
    tok = _token()
    cache.verify(SECRET, tok)
    with pytest.raises(ApiError, match="invalid token"):
        cache.verify("o" * 40, tok)
    assert len(cache) == 1


def test_cache_is_bounded_least_recently_used_first():
    """Past its size the least recently used token leaves; the others stay."""
    cache = TokenCache(size=2)
    a, b, c = (_token(sid=s) for s in ("a", "b", "c"))
    cache.verify(SECRET, a)
    cache.verify(SECRET, b)
    cache.verify(SECRET, a)  # a is now the most recent
    cache.verify(SECRET, c)
    assert len(cache) == 2
    assert {k[1] for k in cache._entries} == {a, c}


async def test_one_redis_command_per_authenticated_request(make_client, settings,
                                                           redis_factory):
    """Session check, lastSeen and the rate limit cost one EVALSHA per request, nothing else."""
    server = redis_factory()
    conn = redis_client(server.url)
    try:
        api = await make_client(settings, conn)
        tok = await mint_token(settings, conn, "alice", "user", 600)
        assert (await api.get(ME, headers=bearer(tok))).status == 200  # loads the script
        await conn.config_resetstat()
        for _ in range(3):
            resp = await api.get(ME, headers=bearer(tok))
            assert resp.status == 200
        stats = await conn.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
        assert calls.pop("evalsha") == 3  # with two calls per request it would be 6
        # everything else is either this test's own or run inside that one script
        inside = {"hmget", "hset", "expire", "time", "zremrangebyscore", "zcard", "zadd",
                  "pexpire"}
        assert set(calls) <= {"info", "config|resetstat", "ping"} | inside, calls
        assert int(resp.headers["X-RateLimit-Remaining"]) == settings.rate_limit[0] - 4
    finally:
        await conn.aclose()


async def test_refused_one_call_script_falls_back_to_two_calls(make_client, make_settings, r,
                                                               token):
    """When Redis refuses the one-call script, the session check and the limit still apply."""
    settings = make_settings(rate_limit=(2, 60.0))
    api = await make_client(settings)
    limiter = api.app[LIMITER]
    # a real refusal from Redis: ACL may not be called from a script
    limiter._admit = r.register_script("return redis.call('ACL', 'WHOAMI')")
    tok = await token("alice", "user")
    sid = jwt.decode(tok, settings.jwt_secret, algorithms=["HS256"])["sid"]
    await r.hset(settings.keys.session(sid), "lastSeen", "0")
    statuses = [(await api.get(ME, headers=bearer(tok))).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert await r.hget(settings.keys.session(sid), "lastSeen") != b"0"
    assert await r.zcard(settings.keys.ratelimit("alice")) == 2
    claims = jwt.decode(tok, settings.jwt_secret, algorithms=["HS256"])
    as_admin = jwt.encode({**claims, "role": "admin"}, settings.jwt_secret, algorithm="HS256")
    assert (await api.get(ME, headers=bearer(as_admin))).status == 401  # the session says user
    await r.delete(settings.keys.session(sid))
    assert (await api.get(ME, headers=bearer(tok))).status == 401
    assert limiter.combined  # a refusal that may pass does not switch the one call off


async def test_scripts_forbidden_by_acl_degrade_like_redis_down(make_client, settings,
                                                                redis_factory):
    """With EVAL/EVALSHA denied, GETs answer with a Warning, POSTs 503, and one call is off."""
    server = redis_factory()
    admin_conn = redis_client(server.url)
    await admin_conn.acl_setuser("api", enabled=True, passwords=["+pw"], keys=["*"],
                                 channels=["*"], commands=["+@all", "-eval", "-evalsha",
                                                           "-script"])
    conn = redis_client(f"redis://api:pw@127.0.0.1:{server.port}/0")
    try:
        api = await make_client(settings, conn)
        headers = bearer(await mint_token(settings, admin_conn, "root", "admin", 600))
        resp = await api.get(ME, headers=headers)
        assert resp.status == 200
        assert "Warning" in resp.headers
        assert not api.app[LIMITER].combined
        assert (await api.post("/auth/logout", headers=headers)).status == 503
    finally:
        await conn.aclose()
        await admin_conn.aclose()


async def test_one_call_limit_is_exact_across_processes(r, settings):
    """Limiters of several processes admitting through the one-call script admit exactly `count`."""
    from wks.http.ratelimit import RateLimiter

    tok = await mint_token(settings, r, "shared", "user", 600)
    sid = jwt.decode(tok, settings.jwt_secret, algorithms=["HS256"])["sid"]
    key = settings.keys.session(sid)
    limiters = [RateLimiter(r, settings.keys, 25, 60.0) for _ in range(4)]
    verdicts = await asyncio.gather(*(lim.admit(key, "shared", "user", 1, 600)
                                      for lim in limiters for _ in range(20)))
    assert all(v is not None for v in verdicts)
    assert sum(v.allowed for v in verdicts if v) == 25
    assert all(0 < v.retry_after_ms <= 60_000 for v in verdicts if v and not v.allowed)
    assert await r.hget(key, "lastSeen") == b"1"
    assert await limiters[0].admit(key, "someone-else", "user", 2, 600) is None  # another sub
    assert await limiters[0].admit(key, "shared", "admin", 2, 600) is None  # another role
    assert await r.hget(key, "lastSeen") == b"1"
