"""Replay memory stays flat: the peak does not grow with the number of entries."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import msgspec
import redis.asyncio as aioredis

from wks.audit import replay_into, scratch_store

_FILL = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('XADD', KEYS[1], '*', 'event', string.format(ARGV[3], i % 500, i, i))
end
return 1
"""


async def fill(r: aioredis.Redis, stream: str, n: int) -> None:
    template = ('{"type":"workflow.progress","executionId":"x-%d","completedSteps":%d,'
                '"currentStep":"step %d","ts":1700000000000}')
    script = r.register_script(_FILL)
    for start in range(0, n, 10_000):
        await script(keys=[stream], args=[start, min(n, start + 10_000) - 1, template])


async def peak_bytes(r: aioredis.Redis, stream: str, where: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        async with scratch_store(None, where) as scratch:
            stats = await replay_into(r, stream, scratch, page=1000)
        return tracemalloc.get_traced_memory()[1], stats.applied
    finally:
        tracemalloc.stop()


async def test_replay_peak_memory_does_not_grow_with_the_stream(
    r: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Four times the entries (same executions) peaks at about the same Python memory."""
    small, large = f"{prefix}:stream:mem-small", f"{prefix}:stream:mem-large"
    await fill(r, small, 5_000)
    await fill(r, large, 20_000)
    msgspec.json.decode(b"{}")  # warm caches so the first run is not charged for them
    started = time.perf_counter()
    peak_small, n_small = await peak_bytes(r, small, tmp_path)
    peak_large, n_large = await peak_bytes(r, large, tmp_path)
    assert (n_small, n_large) == (5_000, 20_000)
    print(f"peak {peak_small} vs {peak_large} bytes in {time.perf_counter() - started:.1f}s")
    assert peak_large < peak_small * 1.25 + 256 * 1024, (peak_small, peak_large)
    # holding on to the 15,000 extra entries (~300 bytes each) would add over 4 MB
    assert peak_large - peak_small < 1024 * 1024
