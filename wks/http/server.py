"""Running the application inside a larger process: `AppRunner` + `TCPSite` until stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from loguru import logger

SHUTDOWN_TIMEOUT = 5.0  # seconds in-flight requests get once the listener is closed


async def serve(
    app: web.Application,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `app` on host:port until `stop` is set, then close cleanly."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        url = f"http://{host}:{port}"
        logger.info("API listening on {}", url)
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
        logger.info("API stopping")
    finally:
        await runner.cleanup()
