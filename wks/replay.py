"""Reading a stream back in pages and folding it into a store (replay, restore catch-up).

Memory stays flat: two pages (default 20,000 entries each) are in memory at a time, the one
being folded and the next one, read, decoded and made into event_log rows meanwhile (as the
state group prepares its next batch: `wks.batch_rows.log_rows_sliced`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
from loguru import logger

from wks.batch_rows import LogRows, log_rows_sliced
from wks.errors import StoreError
from wks.events import (
    DECODE_SLICE,
    Refused,
    StreamEntry,
    decode_slice,
    decode_workflow,
    decode_workflows,
)
from wks.isolate import apply_failed, failing_alone
from wks.keys import EVENT_FIELD
from wks.redis import ReadSize, fields_dict, no_event_reason, read_range
from wks.store import FOLD_BATCH, Store

_ENTRY_ID = re.compile(r"^\d+(-\d+)?$")


def parse_bound(text: str, *, end: bool = False) -> str:
    """`--from`/`--to` values -> an XRANGE bound: an entry id, epoch ms, or an ISO time."""
    value = text.strip()
    if value in ("-", "+"):
        return value
    if _ENTRY_ID.match(value):
        if "-" in value:
            return value
        return f"{value}-{18446744073709551615 if end else 0}"  # a whole millisecond
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not an entry id, epoch milliseconds or ISO-8601 time: {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"give a time zone (e.g. {value}Z for UTC): {text!r}")
    ms = int(moment.timestamp() * 1000)
    if ms < 0:  # entry ids count milliseconds from 1970
        raise ValueError(f"a time before 1970 is before every entry: {text!r}")
    return f"{ms}-{18446744073709551615 if end else 0}"


Page = list[tuple[str, dict[bytes, bytes]]]


async def iter_pages(
    redis: aioredis.Redis, stream: str, start: str = "-", end: str = "+", page: int = 1000
) -> AsyncIterator[Page]:
    """XRANGE `stream` from `start` to `end` (inclusive) a page at a time (`page` entries,
    fewer while the entries are big: see ReadSize)."""
    cursor = start
    size = ReadSize(page)
    while True:
        count = size.count
        rows = await read_range(redis, stream, cursor, end, count=count)
        if not rows:
            return
        size.saw(rows)
        out = [(mid.decode(), fields_dict(fields)) for mid, fields in rows]
        yield out
        if len(rows) < count:
            return
        cursor = f"({out[-1][0]}"  # exclusive start (Redis 6.2+)


def decode_page(page: Page) -> tuple[list[StreamEntry], list[tuple[str, str]]]:
    """Decoded workflow entries, and (entry id, reason) for the ones that are bad, in page
    order: as the consumer decodes them (`decode_slice`: all at once when they plainly
    decode, else one by one)."""
    payloads = [raw for _, fields in page if (raw := fields.get(EVENT_FIELD)) is not None]

    def bug(index: int | None, exc: Exception) -> None:  # skipped like a bad event
        logger.opt(exception=exc).error("decoding {} raised {}", "a page" if index is None
                                        else "an entry", type(exc).__name__)

    items = iter(decode_slice(payloads, decode_workflow, decode_workflows, bug))
    good: list[StreamEntry] = []
    bad: list[tuple[str, str]] = []
    for entry_id, fields in page:
        raw = fields.get(EVENT_FIELD)
        if raw is None:
            bad.append((entry_id, no_event_reason(fields)))
            continue
        item = next(items)
        if isinstance(item, Refused):
            bad.append((entry_id, item.reason))
        else:
            good.append(StreamEntry(entry_id, item, raw))
    return good, bad


async def _log_rows(good: list[StreamEntry]) -> LogRows | None:
    """The page's event_log rows, built ahead; None (apply builds them) if that fails."""
    if not good:
        return None
    try:
        return await log_rows_sliced(good)
    except Exception as exc:
        logger.opt(exception=exc).warning("building a page's event_log rows failed ({}); "
                                          "they are built as it is applied", exc)
        return None


async def _apply(
    store: Store, good: list[StreamEntry], logs: LogRows | None = None
) -> list[tuple[str, str]]:
    """Apply a page's valid entries (`logs`: their rows, built ahead); an entry whose apply
    fails alone (not the store: a poison entry, as a consumer dead-letters it) is skipped,
    and returned with its reason."""
    if not good:  # a page of bad entries, or of other executions only
        return []
    try:
        await store.apply_batch(good, logs=logs)
        return []
    except StoreError:
        raise
    except Exception as exc:
        logger.opt(exception=exc).error("page apply raised {}: {}; isolating the failing "
                                        "entries", type(exc).__name__, exc)
    _, failed = await failing_alone(store.apply_batch, good, (StoreError,))
    for entry, exc in failed:
        logger.bind(entry_id=entry.entry_id).warning("skipped: {}", apply_failed(exc))
    return [(entry.entry_id, apply_failed(exc)) for entry, exc in failed]


@dataclass
class FoldStats:
    entries: int = 0  # stream entries read
    applied: int = 0  # valid workflow events folded (of `execution` only, when given)
    bad: int = 0  # entries that do not decode or fail alone (a consumer dead-letters them)
    first_entry_id: str | None = None
    last_entry_id: str | None = None
    stopped: bool = False  # `stop` was set before the range was done


async def fold_range(
    redis: aioredis.Redis,
    stream: str,
    store: Store,
    start: str = "-",
    end: str = "+",
    *,
    page: int = FOLD_BATCH,
    execution: str | None = None,
    on_page: Callable[[FoldStats], None] | None = None,
    stop: asyncio.Event | None = None,
) -> FoldStats:
    """Fold every valid workflow entry of `stream` in [start, end] into `store` (with
    `execution`, only that execution's events: the rest are read, and counted as entries
    or bad); with `stop`, end after the page in hand once it is set (`stopped` says so)."""
    stats = FoldStats()
    pages = iter_pages(redis, stream, start, end, page)

    async def next_page() -> tuple[
            Page, list[StreamEntry], list[tuple[str, str]], LogRows | None] | None:
        rows = await anext(pages, None)
        if rows is None:
            return None
        good: list[StreamEntry] = []
        bad: list[tuple[str, str]] = []
        for at in range(0, len(rows), DECODE_SLICE):
            await asyncio.sleep(0)  # the page being folded gets its turns (merge, next hop)
            g, b = decode_page(rows[at:at + DECODE_SLICE])
            good += g
            bad += b
        if execution is not None:
            good = [e for e in good if e.event.execution_id == execution]
        return rows, good, bad, await _log_rows(good)

    # the next page, read, decoded and made into rows while one folds
    ahead = asyncio.ensure_future(next_page())
    try:
        while (read := await ahead) is not None:
            ahead = asyncio.ensure_future(next_page())
            rows, good, bad, logs = read
            failed = await _apply(store, good, logs)
            stats.entries += len(rows)
            stats.applied += len(good) - len(failed)
            stats.bad += len(bad) + len(failed)
            stats.first_entry_id = stats.first_entry_id or rows[0][0]
            stats.last_entry_id = rows[-1][0]
            if on_page is not None:
                on_page(stats)
            if stop is not None and stop.is_set():
                stats.stopped = True
                break
    finally:
        if not ahead.done():
            ahead.cancel()
        await asyncio.gather(ahead, return_exceptions=True)
        await pages.aclose()
    return stats
