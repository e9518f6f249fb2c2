"""Small asyncio helpers shared by the long-running loops."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_stop(stop: asyncio.Event, timeout: float) -> bool:
    """Sleep up to `timeout`, waking early when `stop` is set; True if it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=timeout)
    return stop.is_set()
