"""`wks api` and `wks token create` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import reaped, wait_for
from wks.redis import free_port

pytestmark = pytest.mark.slow


def _env(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WKS_", "REDIS_", "JWT_"))}
    env.update({
        "WKS_REDIS_URL": settings.redis_url, "WKS_PREFIX": settings.prefix,
        "WKS_DB_PATH": str(settings.db_path), "WKS_VAR_DIR": str(settings.var_dir),
        "WKS_JWT_SECRET": settings.jwt_secret, "WKS_LOG_FORMAT": "json", **extra,
    })
    return env


async def _wks(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli", *args, env=env, cwd=Path(env["WKS_VAR_DIR"]).parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_api_refuses_to_start_without_a_strong_secret(settings):
    """No secret, or one under 32 bytes: one error line and a non-zero exit."""
    code, _, err = await _wks(_env(settings, WKS_JWT_SECRET=""), "api")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "WKS_JWT_SECRET" in err
    code, _, err = await _wks(_env(settings, WKS_JWT_SECRET="short"), "api")
    assert code == 2
    assert "32 bytes" in err


async def test_token_create_and_api_serve_until_sigterm(settings):
    """A minted token works against a started `wks api`, which exits 0 on SIGTERM."""
    port = free_port()
    env = _env(settings, WKS_PORT=str(port))
    code, out, err = await _wks(env, "token", "create", "--sub", "ops", "--role", "admin",
                                "--ttl", "1h")
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli", "api", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    async with reaped(proc):
        async with aiohttp.ClientSession() as http:
            async def up() -> bool:
                try:
                    async with http.get(f"{base}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(up, 30, "wks api to listen")
            async with http.get(f"{base}/auth/me",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
                user = (await resp.json())["user"]
                assert user["sub"] == "ops"
                assert user["role"] == "admin"
            async with http.get(f"{base}/auth/me") as resp:
                assert resp.status == 401
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_up_without_secret_prints_a_working_admin_token(settings):
    """`wks up` with no secret makes one for the run and its banner token authenticates."""
    port = free_port()
    env = _env(settings, WKS_PORT=str(port), WKS_JWT_SECRET="")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli", "up", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    async with reaped(proc):
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or "Ctrl-C" not in lines[-1]:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, f"wks up exited early: {lines}"
            lines.append(line.decode().strip())
        assert any(f"http://127.0.0.1:{port}" in line for line in lines)
        note = next(i for i, line in enumerate(lines) if "admin token" in line)
        token = lines[note + 1]  # printed right under the note about the made-up secret
        async with aiohttp.ClientSession() as http:
            async def me() -> int:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/auth/me",
                                        headers={"Authorization": f"Bearer {token}"}) as resp:
                        return resp.status
                except aiohttp.ClientError:
                    return 0

            assert await wait_for(me, 30, "wks up to serve the API") == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
