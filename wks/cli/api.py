"""`wks api`: serve the HTTP API alone (SPEC section 8), until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace

from producers.client import Producer
from wks.cli.runtime import Runtime, Service, open_runtime, supervise
from wks.config import Settings
from wks.http.app import create_app
from wks.http.auth import check_secret, mint_token, new_secret
from wks.http.errors import ApiError
from wks.http.server import serve

UP_TOKEN_TTL = 24 * 3600.0  # the admin token `wks up` prints lives as long as a session


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("api", help="serve the HTTP API (needs WKS_JWT_SECRET)")
    p.set_defaults(func=run)


def secret_problem(settings: Settings) -> str | None:
    """Why the API must not start with these settings (what `check_secret` would refuse
    every request for), or None."""
    try:
        check_secret(settings)
    except ApiError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    problem = secret_problem(settings)
    if problem:
        print(f"wks api: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_main(settings))


async def _main(settings: Settings) -> int:
    async with open_runtime(settings) as rt:
        return await supervise({"api": api_service(rt, settings)}, settings.shutdown_grace)


def api_service(rt: Runtime, settings: Settings) -> Service:
    """The API as a service of `supervise`: serves until `stop` is set."""

    async def run(stop: asyncio.Event) -> None:
        # buffer_size=0: a request that cannot publish gets a 503, never a silent buffer
        producer = Producer(rt.redis, settings.keys, buffer_size=0)
        app = create_app(settings, rt.redis, runtime=rt, producer=producer)
        await serve(app, settings.host, settings.port, stop)

    return run


async def up_hook(rt: Runtime) -> tuple[str, Service, list[str]]:
    """`wks up` also serves the API; with no secret configured it makes one for this run."""
    settings = rt.settings
    lines = [f"API http://{settings.host}:{settings.port}"]
    if not settings.jwt_secret:
        settings = replace(settings, jwt_secret=new_secret())
        token = await mint_token(settings, rt.redis, "admin", "admin", UP_TOKEN_TTL)
        lines.append("no WKS_JWT_SECRET: made one for this run; admin token (24h):")
        lines.append(token)
    return "api", api_service(rt, settings), lines
