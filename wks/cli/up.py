"""`wks up`: the quick start. Every consumer group (and the API) in one process.

With no Redis URL configured it starts and manages a real redis-server (SPEC section 10).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from loguru import logger

from wks.cli import api
from wks.cli.runtime import Signals, StoppedStarting, catch_signals, open_runtime, supervise
from wks.cli.services import GROUP_SERVICES, Runtime, state_service
from wks.config import Settings
from wks.keys import GROUP_STATE
from wks.redis import server_info


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run everything in one process (starts Redis if needed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_main(settings))


def banner(rt: Runtime, version: str, lines: list[str]) -> None:
    out = sys.stdout
    print(f"wks up: Redis {version} ({rt.mode}) at {rt.url}", file=out)
    print(f"        database {rt.settings.db_path}", file=out)
    for line in lines:
        print(f"        {line}", file=out)
    print("        Ctrl-C to stop", file=out, flush=True)


async def _main(settings: Settings) -> int:
    # signals from the start: Ctrl-C while the managed server starts still stops it
    with catch_signals(settings.shutdown_grace) as signals:
        try:
            return await _up(settings, signals)
        except StoppedStarting:
            logger.info("stopped during start-up")
            return 0


async def _up(settings: Settings, signals: Signals) -> int:
    async with open_runtime(settings, manage=True, halt=signals.halt) as rt:
        info = await server_info(rt.redis)
        services = {g: make(rt) for g, make in GROUP_SERVICES.items()}
        # the API shares this event loop (see state_service)
        services[GROUP_STATE] = state_service(rt, shared_loop=True)
        lines: list[str] = []
        for extra in EXTRA_SERVICES:
            name, service, text = await extra(rt)
            services[name] = service
            lines.extend(text)
        banner(rt, info.version_text, lines)
        return await supervise(services, settings.shutdown_grace, signals)


# hooks that add non-group services to `wks up` (the API): async (Runtime) ->
# (name, service, banner lines)
EXTRA_SERVICES: list = []  # type: ignore[type-arg]
EXTRA_SERVICES.append(api.up_hook)  # serve the HTTP API too
