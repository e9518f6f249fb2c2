"""The consumer-group loop: read, claim, dead-letter, apply, acknowledge, shut down.

One `GroupReader` per (stream, group, consumer). It creates its group (MKSTREAM, from the
start of the stream, tolerating BUSYGROUP), reads batches with XREADGROUP BLOCK, claims entries
idle longer than `claim_idle` with XAUTOCLAIM, and hands decoded entries to a `Handler`.
An entry is acknowledged only after the handler has committed its effect. Bad entries (and
entries delivered more than `max_deliveries` times) go to the dead-letter stream with their
origin, raw payload and reason, and are acknowledged. The next batch is read while the
current one commits, so the event loop and SQLite's thread both stay busy.

Redis down: back off (capped, jittered), report not-ok, recover alone; a vanished group
(Redis restarted empty) is recreated. On stop the loop reads nothing more and finishes the
batch in hand; `burst=True` returns once the stream is drained, so tests never sleep.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from consumers.acks import Acknowledger, RawEntry, reason_kind
from consumers.prune import PRUNE_IDLE, ConsumerPruner
from wks import metrics
from wks.aio import wait_stop
from wks.errors import StoreError, TransientError
from wks.events import (
    DECODE_SLICE,
    Refused,
    StreamEntry,
    decode_slice,
    split_entry_id,
    type_tag,
)
from wks.isolate import apply_failed, failing_alone
from wks.keys import EVENT_FIELD, Keys
from wks.liveness import Heartbeat
from wks.redis import (
    REDIS_DOWN,
    Backoff,
    ReadSize,
    fields_dict,
    is_loading,
    no_event_reason,
    read_group,
    text,
)
from wks.resp import Mux, mux_of
from wks.stream_stats import group_stats

_PRUNE_EVERY = 600.0  # seconds between two prunings of departed consumers


class Handler(Protocol):
    """What a group runs: decode raw bytes (raise BadEventError), or a slice of them at once
    (the items when all plainly decode, else None and `decode` judges each), prepare a
    decoded batch ahead of its turn (on the event loop's thread while the batch before it is
    in SQLite's hands, yielding to it often; None when there is nothing to prepare), and
    apply a batch durably (with what `prepare` returned for exactly these items, or None)."""

    def decode(self, raw: bytes) -> Any: ...

    def decode_many(self, raws: list[bytes]) -> list[Any] | None: ...

    async def prepare(self, items: Sequence[StreamEntry]) -> Any: ...

    async def apply(self, items: Sequence[StreamEntry], prepared: Any = None) -> None: ...


@dataclass
class ReaderStatus:
    redis_ok: bool = True  # the last Redis call worked
    apply_ok: bool = True  # the last batch committed (False while SQLite refuses)
    ack_ok: bool = True  # the last committed batch was acknowledged (False while retried)
    last_error: str | None = None
    batches: int = 0
    applied: int = 0
    dead: int = 0
    claimed: int = 0
    taken_over: int = 0  # entries of a failed batch another consumer claimed before a retry
    last_batch_at: float = field(default=0.0)

    @property
    def ok(self) -> bool:
        return self.redis_ok and self.apply_ok and self.ack_ok


# failures that say nothing about the entries: keep the batch and retry it, never dead-letter
_RETRYABLE: tuple[type[BaseException], ...] = (
    *REDIS_DOWN, StoreError, TransientError, ResponseError)


@dataclass
class Decoded:
    """A batch sorted: entries to apply, and entries to dead-letter with their reason."""

    good: list[StreamEntry] = field(default_factory=list)
    dead: list[tuple[RawEntry, str]] = field(default_factory=list)
    prepared: Any = None  # Handler.prepare(good)

    def add(self, other: Decoded) -> None:
        self.good += other.good
        self.dead += other.dead
        self.prepared = None  # it no longer matches `good`


def _entries(read: list[Any]) -> list[RawEntry]:
    return [RawEntry(mid.decode(), None if fields is None else fields_dict(fields))
            for mid, fields in read]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class GroupReader:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        name: str,
        stream: str,
        group: str,
        handler: Handler,
        consumer: str | None = None,
        claim_idle: float = 60.0,
        max_deliveries: int = 5,
        batch_size: int = 1000,
        block_ms: int = 1000,
        burst: bool = False,
        stats_every: float = 5.0,
        prune_idle: float = PRUNE_IDLE,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.stream = stream
        self.group = group
        self.handler = handler
        self.consumer = consumer or consumer_name()
        self.claim_idle_ms = max(1, int(claim_idle * 1000))
        self.max_deliveries = max_deliveries
        self.batch_size = batch_size
        self.block_ms = 50 if burst else block_ms
        self.burst = burst
        self.stats_every = stats_every
        self.status = ReaderStatus()
        self._claim_cursor = "0-0"
        self._claim_every = min(max(claim_idle / 4, 0.05), 15.0)
        self._last_claim = float("-inf")
        self._last_stats = float("-inf")
        self._last_prune = float("-inf")
        self._backoff = Backoff()
        self._acks = Acknowledger(redis, keys, stream, group)
        self._pruner = ConsumerPruner(redis, keys, stream, group, self.consumer, prune_idle)
        self.heartbeat = Heartbeat(redis, keys, group, self.consumer)
        self._size = ReadSize(batch_size)  # entries per read: batch_size, fewer if they are big
        self._log = logger.bind(stream=stream, group=group, consumer=self.consumer)
        self._acking: asyncio.Task[None] | None = None  # the last committed batch's XACK
        # the blocking reads' own lean connection (wks.resp): a batch's read cost ~150 us
        # of the loop's CPU through redis-py, paid per batch, and at low rates a batch is
        # an event or two; None where the client has none (redis-py reads then)
        self._reads = Mux.of(redis) if mux_of(redis) is not None else None

    # -- group lifecycle ----------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            self._log.info("created consumer group")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set (or, in burst mode, until drained), keeping a
        heartbeat (wks.liveness) while it runs."""
        async with self.heartbeat.running():
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        metrics.CONSUMER_UP.labels(self.group).set(1)
        self._acking = None
        inflight: asyncio.Task[bool] | None = None
        inflight_batch: list[RawEntry] = []
        try:
            await self._until_ok(self.ensure_group, stop)
            await self._prune()
            while not stop.is_set():
                batch = await self._fetch_guarded(stop)
                # decoded and prepared now, while the previous batch is in SQLite's hands
                decoded = await self._decode(batch)
                await self._prepare(decoded)
                if inflight is not None:
                    waited = not inflight.done()  # the read came back while it still ran
                    ok = await inflight
                    inflight = None
                    if not ok:
                        await self._retry(inflight_batch, stop)
                    if waited and batch and len(batch) < self._size.count:
                        # entries that arrived while the previous batch committed join this
                        # one instead of waiting a whole commit more (latency at low rates)
                        more = await self._top_up(self._size.count - len(batch))
                        if more:
                            batch.extend(more)
                            decoded.add(await self._decode(more))
                if batch:
                    inflight_batch = batch
                    inflight = asyncio.create_task(self._process(batch, stop, decoded))
                elif self.burst:
                    await self._acked()  # drained means acknowledged too
                    if await self._drained_guarded():
                        break
                await self._maybe_stats()
        finally:
            if self._reads is not None:
                self._reads.close()  # nothing more is read
            try:
                if inflight is not None:
                    # finish and acknowledge the batch in hand even if we are being cancelled
                    ok = await asyncio.shield(inflight)
                    if not ok and not stop.is_set():
                        await self._retry(inflight_batch, stop)
                await self._acked()
            finally:
                metrics.CONSUMER_UP.labels(self.group).set(0)

    async def _until_ok(self, op: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await op()
                self._mark_ok()
                return
            except REDIS_DOWN as exc:
                await self._down("ensure group", exc, stop)
            except ResponseError as exc:
                if not is_loading(exc):
                    raise
                await self._down("ensure group", exc, stop)

    async def _fetch_guarded(self, stop: asyncio.Event) -> list[RawEntry]:
        try:
            batch = await self._fetch()
            self._mark_ok()
            return batch
        except REDIS_DOWN as exc:
            await self._down("read", exc, stop)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._log.warning("consumer group missing (Redis restarted empty?); recreating")
                await self._until_ok(self.ensure_group, stop)
            elif is_loading(exc):
                await self._down("read", exc, stop)
            else:
                raise
        return []

    async def _acked(self) -> None:
        """Wait for the acknowledgement in flight, if any. Shielded: cancelling the waiter
        (a batch, the loop) must not cancel a committed batch's XACK."""
        if self._acking is not None:
            await asyncio.shield(self._acking)

    async def _drained_guarded(self) -> bool:
        try:
            info = await self.redis.xpending(self.stream, self.group)
        except REDIS_DOWN:
            return False
        except ResponseError:
            return False
        return int(info["pending"]) == 0

    async def _down(self, op: str, exc: BaseException, stop: asyncio.Event) -> None:
        metrics.REDIS_ERRORS.labels(f"consumer:{self.group}").inc()
        metrics.REDIS_UP.set(0)
        delay = self._backoff.next()
        if self.status.redis_ok:
            self._log.warning("redis {} failed: {}; retrying with backoff", op, exc)
        self.status.redis_ok = False
        self.status.last_error = f"redis {op}: {exc}"
        await wait_stop(stop, delay)  # a stopping worker must not sit out a 5 s backoff

    def _mark_ok(self) -> None:
        if not self.status.redis_ok:
            self._log.info("redis reachable again")
        self.status.redis_ok = True
        if self.status.apply_ok and self.status.ack_ok:
            self.status.last_error = None
        metrics.REDIS_UP.set(1)
        self._backoff.reset()

    async def _fetch(self) -> list[RawEntry]:
        now = time.monotonic()
        if now - self._last_claim >= self._claim_every:
            claimed = await self._claim()
            if claimed:
                return claimed
            self._last_claim = now
        read = await read_group(self.redis, self.group, self.consumer, self.stream,
                                count=self._size.count, block_ms=self.block_ms,
                                blocking=self._reads)
        self._size.saw(read)
        return _entries(read)

    async def _top_up(self, count: int) -> list[RawEntry]:
        """New entries already waiting, without blocking; nothing when Redis is unwell."""
        try:
            return _entries(await read_group(
                self.redis, self.group, self.consumer, self.stream, count=count))
        except (*REDIS_DOWN, ResponseError):
            return []  # the next regular read reports and handles it

    async def _claim(self) -> list[RawEntry]:
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms,
            start_id=self._claim_cursor, count=self._size.count,
        )
        self._claim_cursor = text(reply[0])
        messages = reply[1]
        out = [RawEntry(text(mid), fields or None) for mid, fields in messages]
        # Redis 7 reports ids deleted from the stream separately; 6.2 returns them with nil
        if len(reply) > 2:
            out.extend(RawEntry(text(mid), None) for mid in reply[2])
        if not out:
            return []
        live = [r.entry_id for r in out if r.fields is not None]
        if live:
            counts = await self.redis.xpending_range(
                self.stream, self.group, min=min(live, key=split_entry_id),
                max=max(live, key=split_entry_id), count=len(out) + 10,
                consumername=self.consumer,
            )
            by_id = {text(p["message_id"]): int(p["times_delivered"]) for p in counts}
            for r in out:
                r.deliveries = by_id.get(r.entry_id, r.deliveries)
        metrics.CLAIMED.labels(self.group).inc(len(out))
        self.status.claimed += len(out)
        self._log.info("claimed {} idle entries", len(out))
        return out

    # -- one batch ----------------------------------------------------------------------------

    async def _decode(self, batch: list[RawEntry]) -> Decoded:
        """Sort a batch into decoded entries and dead letters.

        Runs on the event loop's thread, so it yields every `DECODE_SLICE` entries: the
        batch in SQLite's hands gets its turn (merge, mirror) without waiting for all of it."""
        out = Decoded()
        for start in range(0, len(batch), DECODE_SLICE):
            if start:
                await asyncio.sleep(0)
            self._decode_slice(batch[start:start + DECODE_SLICE], out)
        return out

    def _decode_slice(self, part: list[RawEntry], out: Decoded) -> None:
        """`_decode` of one slice (`wks.events.decode_slice`: the handler's `decode_many`
        for all of its payloads at once, or its `decode` one by one), in stream order."""
        plain = self._decode_plain(part, out)
        if plain:
            return
        rows: list[tuple[RawEntry, bytes | Refused]] = []  # an entry's payload, or why not
        for raw in part:
            if raw.fields is None:
                continue  # deleted while pending: nothing to apply, only acknowledge
            reason = self._undecodable(raw, raw.fields)
            rows.append((raw, raw.fields[EVENT_FIELD] if reason is None else Refused(reason)))
        payloads = [p for _, p in rows if not isinstance(p, Refused)]

        def bug(index: int | None, exc: Exception) -> None:
            decoded = [raw for raw, p in rows if not isinstance(p, Refused)]
            self._decoder_bug("a slice" if index is None else f"entry {decoded[index].entry_id}",
                              exc)

        # `decode_many` declined these very payloads already (plain is None): not again
        decode_many = None if plain is None else getattr(self.handler, "decode_many", None)
        items = iter(decode_slice(payloads, self.handler.decode, decode_many, bug))
        for raw, payload in rows:
            if isinstance(payload, Refused):
                out.dead.append((raw, payload.reason))
                continue
            item = next(items)
            if isinstance(item, Refused):
                out.dead.append((raw, item.reason))
            else:
                out.good.append(StreamEntry(raw.entry_id, item, payload))

    def _decode_plain(self, part: list[RawEntry], out: Decoded) -> bool | None:
        """The usual slice, in a few passes: every entry has its `event` field, is within
        maxDeliveries and decodes through the handler's `decode_many`. With `out` untouched,
        `_decode_slice` then judges entry by entry: False for any other slice, None when
        `decode_many` declined or raised (reported here, once)."""
        decode_many = getattr(self.handler, "decode_many", None)
        if decode_many is None or not part:
            return False
        try:
            payloads = [raw.fields[EVENT_FIELD] for raw in part]  # type: ignore[index]
        except (KeyError, TypeError):  # no `event` field; deleted while pending (None)
            return False
        if max(raw.deliveries for raw in part) > self.max_deliveries:
            return False
        try:
            items = decode_many(list(payloads))
        except Exception as exc:
            self._decoder_bug("a slice", exc)
            return None
        if items is None or len(items) != len(part):
            return None
        out.good += [StreamEntry(raw.entry_id, item, payload)
                     for raw, item, payload in zip(part, items, payloads, strict=True)]
        return True

    def _decoder_bug(self, what: str, exc: Exception) -> None:
        """A decoder raised what is not a BadEventError: a bug (SPEC 5), logged; the entries
        are judged one by one instead."""
        self._log.opt(exception=exc).error("decoding {} raised {}", what, type(exc).__name__)

    def _undecodable(self, raw: RawEntry, fields: dict[bytes, bytes]) -> str | None:
        """Why an entry (with these fields) is dead before its payload is looked at, if it
        is."""
        if EVENT_FIELD not in fields:
            return no_event_reason(fields)
        if raw.deliveries > self.max_deliveries:
            return (f"delivered {raw.deliveries} times without success "
                    f"(maxDeliveries {self.max_deliveries})")
        return None

    async def _prepare(self, decoded: Decoded) -> None:
        """The handler's work ahead of the batch's turn. A failure here only loses the head
        start: apply does the work itself, and its failures are handled there."""
        if not decoded.good:
            return
        try:
            decoded.prepared = await self.handler.prepare(decoded.good)
        except Exception as exc:
            self._log.opt(exception=exc).warning("preparing a batch failed ({}); it is "
                                                 "applied without", exc)

    async def _process(
        self, batch: list[RawEntry], stop: asyncio.Event, decoded: Decoded | None = None
    ) -> bool:
        """Apply (decoding first unless done already), then start acknowledging: True once
        the batch is committed, False when it must be retried.

        The acknowledgement runs while the next batch applies: SQLite's thread idled for it
        (a Redis round trip, then the metrics) between one batch's COMMIT and the next
        batch's load, a fifth of a full batch's time."""
        if decoded is None:
            decoded = await self._decode(batch)
        good, dead = decoded.good, list(decoded.dead)
        started = time.perf_counter()
        try:
            if good:
                good = await self._apply(good, batch, dead, decoded.prepared)
        except REDIS_DOWN as exc:  # the mirror is written before COMMIT
            return self._failed("redis", exc)
        except (StoreError, TransientError) as exc:
            metrics.STORE_ERRORS.labels(f"apply:{self.group}").inc()
            return self._failed("apply", exc)
        except ResponseError as exc:
            return self._failed("redis", exc)
        if not (self.status.apply_ok and self.status.redis_ok):
            self._log.info("batch applied again after a failure")
        self.status.apply_ok = self.status.redis_ok = True
        if self.status.ack_ok:
            self.status.last_error = None
        await self._acked()  # one acknowledgement in flight at a time
        self._acking = asyncio.create_task(self._acknowledge(batch, good, dead, started, stop))
        return True

    async def _acknowledge(
        self, batch: list[RawEntry], good: list[StreamEntry], dead: list[tuple[RawEntry, str]],
        started: float, stop: asyncio.Event,
    ) -> None:
        """XACK a committed batch (and write its dead letters), retrying only the
        acknowledgement while Redis is unwell: the effect is in SQLite already. On stop the
        entries stay pending; whoever claims them finds their events logged."""
        ids = [r.entry_id for r in batch]
        backoff = Backoff(cap=5.0)
        while True:
            try:
                await self._acks.ack(ids, dead)
                break
            except (*REDIS_DOWN, ResponseError) as exc:
                self._failed("redis", exc, acknowledging=True)
            if await wait_stop(stop, backoff.next()):
                return
        if not self.status.ack_ok:
            self._log.info("batch acknowledged again after a failure")
            self.status.ack_ok = True
        if self.status.apply_ok and self.status.redis_ok:
            self.status.last_error = None
        self._record(good, dead, time.perf_counter() - started)

    async def _apply(
        self, good: list[StreamEntry], batch: list[RawEntry], dead: list[tuple[RawEntry, str]],
        prepared: Any = None,
    ) -> list[StreamEntry]:
        """Apply; if the handler raises something that is not transient (a bug, a poison
        entry), isolate the failing entries (`wks.isolate`), so that only they are
        dead-lettered and the rest of the batch is not held back."""
        try:
            await self.handler.apply(good, prepared)
            return good
        except _RETRYABLE:
            raise
        except Exception as exc:
            self._log.opt(exception=exc).error(
                "batch apply raised {}: {}; isolating the failing entries",
                type(exc).__name__, exc)
        raws = {r.entry_id: r for r in batch}
        applied, failed = await failing_alone(self.handler.apply, good, _RETRYABLE)
        dead += [(raws[entry.entry_id], apply_failed(exc)) for entry, exc in failed]
        return applied

    def _failed(self, what: str, exc: BaseException, *, acknowledging: bool = False) -> bool:
        if acknowledging:  # until the XACK works: a successful read in between says nothing
            self.status.ack_ok = False
        elif what == "apply":
            self.status.apply_ok = False
        else:
            self.status.redis_ok = False
        step = " (acknowledgement)" if acknowledging else ""
        self.status.last_error = f"{what}{step}: {exc}"
        self._log.error("batch not {} ({}): {}; it stays pending and will be retried",
                        "acknowledged" if acknowledging else "applied", what, exc)
        return False

    async def _retry(self, batch: list[RawEntry], stop: asyncio.Event) -> None:
        """Retry a failed batch with backoff; on stop leave it pending for another consumer.

        Entries another consumer has claimed meanwhile (it found them idle while we failed)
        are left to it: re-folding them would be harmless but would take the write lock for
        nothing, over and over while the backoff lasts.
        """
        backoff = Backoff(cap=5.0)
        while not await wait_stop(stop, backoff.next()):
            ours = await self._still_ours(batch)
            self.status.taken_over += len(batch) - len(ours)
            batch = ours
            if not batch:
                self._log.info("failed batch taken over by another consumer; not retried")
                return
            if await self._process(batch, stop):
                return

    async def _still_ours(self, batch: list[RawEntry]) -> list[RawEntry]:
        """The entries of `batch` still pending to this consumer (all of them if unknown).

        Missing one of ours here loses nothing: it stays pending and is claimed back.
        """
        ids = [r.entry_id for r in batch]
        try:
            rows = await self.redis.xpending_range(
                self.stream, self.group, min=min(ids, key=split_entry_id),
                max=max(ids, key=split_entry_id), count=2 * len(ids) + 100,
                consumername=self.consumer)
        except (*REDIS_DOWN, ResponseError):
            return batch  # cannot tell: try; _process reports what fails
        ours = {text(p["message_id"]) for p in rows}
        return [r for r in batch if r.entry_id in ours]

    def _record(
        self, good: list[StreamEntry], dead: list[tuple[RawEntry, str]], elapsed: float
    ) -> None:
        status = self.status
        status.batches += 1
        status.applied += len(good)
        status.dead += len(dead)
        status.last_batch_at = time.time()
        metrics.BATCH_SECONDS.labels(self.group).observe(elapsed)
        metrics.BATCH_SIZE.labels(self.group).observe(len(good) + len(dead))
        now_ms = time.time() * 1000
        # one age per stream millisecond (its entries share it), one label per event class
        by_ms = Counter([item.entry_id.partition("-")[0] for item in good])
        metrics.observe_counted(metrics.EVENT_AGE.labels(self.group), [
            (max(0.0, (now_ms - int(ms)) / 1000), n) for ms, n in by_ms.items()])
        for cls, n in Counter([type(item.event) for item in good]).items():
            metrics.EVENTS.labels(self.name, type_tag(cls), "applied").inc(n)
        for _raw, reason in dead:
            kind = reason_kind(reason)
            metrics.EVENTS.labels(self.name, "unknown", "dead").inc()
            metrics.DEAD_LETTERS.labels(self.name, kind).inc()

    async def _prune(self) -> None:
        """Take departed consumers out of the group (consumers.prune); at start, then now
        and then. Nothing depends on it: a failure waits for the next turn."""
        self._last_prune = time.monotonic()
        try:
            removed = await self._pruner.prune()
        except (*REDIS_DOWN, ResponseError) as exc:
            self._log.debug("pruning departed consumers failed: {}", exc)
            return
        if removed:
            self._log.info("removed {} departed consumers from the group", removed)

    async def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_prune >= _PRUNE_EVERY:  # housekeeping at the same pace
            await self._prune()
        if now - self._last_stats < self.stats_every:
            return
        self._last_stats = now
        try:
            stats = await group_stats(self.redis, self.stream, self.group)
        except (*REDIS_DOWN, ResponseError):
            return
        if stats is not None:
            metrics.GROUP_PENDING.labels(self.group).set(stats["pending"])
            if stats["lag"] is not None:
                metrics.GROUP_LAG.labels(self.group).set(stats["lag"])
            metrics.GROUP_OLDEST_PENDING.labels(self.group).set(
                stats["oldestPendingIdleMs"] / 1000
            )
