"""Authentication: JWTs bound to Redis sessions, refusals as JSON 401s, logout revokes."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from tests.http.conftest import bearer, raw_http
from wks.config import Settings
from wks.http.auth import decode_token, mint_token

ME = "/auth/me"


def _forge(settings: Settings, claims: dict, *, key: str | None = None, alg: str = "HS256") -> str:
    return jwt.encode(claims, key or settings.jwt_secret, algorithm=alg)


async def _assert_401(client, headers: dict[str, str]) -> dict:
    resp = await client.get(ME, headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["success"] is False
    assert isinstance(body["error"], str)
    return body


async def test_valid_token_identifies_the_caller(client, token):
    """A minted token authenticates and /auth/me names its subject and role."""
    resp = await client.get(ME, headers=bearer(await token("alice", "user")))
    assert resp.status == 200
    body = await resp.json()
    assert body["success"] is True
    assert body["user"]["sub"] == "alice"
    assert body["user"]["role"] == "user"
    assert body["user"]["expiresAt"] > time.time() * 1000


async def test_missing_and_garbage_tokens_are_refused(client):
    """No header, a non-bearer scheme and garbage all answer 401."""
    await _assert_401(client, {})
    await _assert_401(client, {"Authorization": "Basic dXNlcjpwYXNz"})
    await _assert_401(client, bearer("not.a.jwt"))
    await _assert_401(client, bearer("x" * 300))


async def test_alg_none_wrong_key_and_expired_are_refused(client, settings, r):
    """alg:none, a wrong key, an expired token and a token without exp answer 401."""
    good = await mint_token(settings, r, "bob", "admin", 60)
    claims = jwt.decode(good, settings.jwt_secret, algorithms=["HS256"])
    unsigned = jwt.encode(claims, None, algorithm="none")
    await _assert_401(client, bearer(unsigned))
    await _assert_401(client, bearer(_forge(settings, claims, key="another-secret-" + "y" * 40)))
    expired = {**claims, "exp": int(time.time()) - 10}
    assert "expired" in (await _assert_401(client, bearer(_forge(settings, expired))))["error"]
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    await _assert_401(client, bearer(_forge(settings, no_exp)))
    bad_role = {**claims, "role": "root"}
    await _assert_401(client, bearer(_forge(settings, bad_role)))


async def test_token_for_unknown_session_is_refused(client, settings):
    """A correctly signed token whose sid has no Redis session answers 401."""
    claims = {"sub": "eve", "role": "admin", "sid": "nope", "exp": int(time.time()) + 60}
    await _assert_401(client, bearer(_forge(settings, claims)))


async def test_token_resigned_with_another_role_is_refused(client, settings, r):
    """A user's token re-signed as admin (its session says user) answers 401, not admin."""
    good = await mint_token(settings, r, "mallory", "user", 60)
    claims = jwt.decode(good, settings.jwt_secret, algorithms=["HS256"])
    assert (await client.get(ME, headers=bearer(good))).status == 200
    await _assert_401(client, bearer(_forge(settings, {**claims, "role": "admin"})))


async def test_logout_revokes_the_token(client, token, settings, r):
    """After POST /auth/logout the same token answers 401 and its session key is gone."""
    tok = await token("carol", "user")
    sid = decode_token(settings.jwt_secret, tok).sid
    assert await r.exists(settings.keys.session(sid)) == 1
    resp = await client.post("/auth/logout", headers=bearer(tok))
    assert resp.status == 200
    assert (await resp.json()) == {"success": True, "message": "Logged out"}
    assert await r.exists(settings.keys.session(sid)) == 0
    await _assert_401(client, bearer(tok))


async def test_session_hash_and_ttl(settings, r):
    """mint_token writes sub, role, created, lastSeen with a TTL of at most 24h."""
    tok = await mint_token(settings, r, "dave", "user", 7 * 86400)
    sid = decode_token(settings.jwt_secret, tok).sid
    session = await r.hgetall(settings.keys.session(sid))
    assert {k.decode() for k in session} == {"sub", "role", "created", "lastSeen"}
    assert session[b"sub"] == b"dave"
    assert session[b"role"] == b"user"
    assert 0 < await r.ttl(settings.keys.session(sid)) <= 86400


async def test_mint_refuses_bad_input(settings, r):
    """An unknown role or empty subject is refused before anything is written."""
    with pytest.raises(ValueError, match="role"):
        await mint_token(settings, r, "x", "root", 60)
    with pytest.raises(ValueError, match="sub"):
        await mint_token(settings, r, "", "user", 60)


async def test_token_with_a_non_utf8_byte_is_a_401(client):
    """A bearer token holding a byte that is not UTF-8 answers the JSON 401, not a 500."""
    for token in (b"\xe9\xe9", b"ey\xff.e30.x"):
        status, headers, body = await raw_http(
            client.host, client.port,
            b"GET /api/workflow-state/active/list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Authorization: Bearer " + token + b"\r\n\r\n")
        assert status == 401, body
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body) == {"success": False, "error": "invalid token"}


async def test_exp_and_iat_must_be_integers_in_range(client, settings, r):
    """exp (and iat, when present) must be JSON integers up to year 9999: a numeric string,
    a float or a 23-digit integer is an invalid token, even with a live session."""
    good = await mint_token(settings, r, "bob", "admin", 600)
    claims = jwt.decode(good, settings.jwt_secret, algorithms=["HS256"])
    assert (await client.get(ME, headers=bearer(good))).status == 200  # the session is live
    later = claims["exp"]
    for changes in ({"exp": str(later)}, {"exp": 1e300}, {"exp": float(later)},
                    {"exp": 10**22}, {"iat": True}, {"iat": str(claims["iat"])},
                    {"iat": float(claims["iat"])}, {"iat": -1}):
        body = await _assert_401(client, bearer(_forge(settings, {**claims, **changes})))
        assert body["error"] == "invalid token", changes
