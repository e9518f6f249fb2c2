"""The producer library: publish workflow events and backup requests on Redis Streams.

    async with Producer.connect("redis://localhost:6379/0") as p:
        async with p.track("exec-1", "nightly-etl", total_steps=3, owner="alice") as t:
            await t.step("extract")
            await t.step("transform")
            await t.step("load")

Each event gets an `eventId` unless the caller chooses one (unique per producer and
increasing, so a resend after an ambiguous failure is recognised and folded once).
A batch is appended in ONE server call (a Lua script looping XADD and returning the ids);
a publish of more than one batch sends each next batch on the same connection before the
previous one's ids are back, so Redis never idles between them and order holds. Where
scripts are not allowed it falls back to a pipeline of XADDs. While Redis is
unreachable, events wait in a bounded in-memory buffer and are flushed in order when it
returns; a full buffer raises `BufferFull` instead of dropping anything. With
`buffer_size=0` nothing is buffered and an unreachable Redis raises `RedisUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from producers.checks import check_payloads, encode_checked, stream_kind
from wks import metrics
from wks.errors import BadEventError, BufferFull, RedisUnavailable
from wks.events import (
    BackupRequested,
    Event,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowEvent,
    WorkflowFailed,
    WorkflowProgress,
    WorkflowStarted,
    now_ms,
)
from wks.keys import EVENT_FIELD, Keys
from wks.redis import REDIS_DOWN, Backoff, client, run_script, scripts_refused, text

# KEYS[1] = stream; ARGV[1] = the encoded events as one msgpack array of strings (one
# argument: redis-py packs each argument in Python, ~1 us apiece). Returns the ids in order.
_APPEND = """
local payloads = cmsgpack.unpack(ARGV[1])
local ids = {}
for i = 1, #payloads do
  ids[i] = redis.call('XADD', KEYS[1], '*', 'event', payloads[i])
end
return ids
"""
_BATCH = 1000
_pack = msgspec.msgpack.Encoder()


def _url_of(r: aioredis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class Producer:
    """Publishes events; one instance per process is enough (it is safe across tasks)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys | None = None,
        *,
        buffer_size: int = 10_000,
        use_script: bool = True,
        durable: bool = False,
        owns_client: bool = False,
    ) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.buffer_size = buffer_size
        self.durable = durable
        self.mode = "script" if use_script else "pipeline"
        self._script = redis.register_script(_APPEND)
        self._owns_client = owns_client
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._send_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self._id_prefix = uuid.uuid4().hex[:12]
        self._counter = 0
        self.durability: str | None = None  # known after the first durable publish

    @classmethod
    def connect(cls, url: str, prefix: str = "wks", **kwargs: Any) -> Producer:
        return cls(client(url), Keys(prefix), owns_client=True, **kwargs)

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, flush_timeout: float = 10.0) -> None:
        """Flush what is buffered (up to `flush_timeout`), stop the flusher, close.

        Raises RedisUnavailable when events are still buffered after `flush_timeout`:
        closing must not drop them silently (they stay in the buffer, unpublished).
        """
        if self._buffer:
            with contextlib.suppress(TimeoutError):
                await self.flush(flush_timeout)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        url = _url_of(self.redis)
        if self._owns_client:
            await self.redis.aclose()
        if self._buffer:
            logger.error("producer closed with {} events unpublished", len(self._buffer))
            raise RedisUnavailable(
                f"close with {len(self._buffer)} events still buffered (not published)", url)

    # -- ids ----------------------------------------------------------------------------------

    def next_event_id(self) -> str:
        """Unique per producer and increasing, so same-ms events keep their emission order."""
        self._counter += 1
        return f"{self._id_prefix}-{self._counter:012d}"

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, event: Event, stream: str | None = None) -> str | None:
        """Publish one event; its entry id, or None when it was buffered (Redis down)."""
        ids = await self.publish_many([event], stream)
        return ids[0] if ids else None

    async def publish_many(
        self, events: Sequence[Event], stream: str | None = None
    ) -> list[str] | None:
        """Publish in order, batched; entry ids, or None when the events were buffered.

        Raises BadEventError when the consumers would refuse one of `events` (SPEC section
        3): an invalid event is refused here, to its caller, instead of landing in the
        dead-letter stream where nobody is waiting for it. Up to 1,000 events (and always
        with `durable`, in pipeline mode or into the buffer) nothing of `events` is
        published then. A bigger publish through the script judges each chunk of 1,000
        just before sending it, while Redis appends the chunk before (judging the whole
        call first left Redis idle meanwhile: a third of the throughput); a refused event
        stops it before its chunk, and the error says how many events before it went out.
        """
        target = stream or self.keys.workflow_stream
        kind = self._kind(target)
        streamed = len(events) > _BATCH and self.mode == "script" and not self.durable
        payloads: list[bytes] = [] if streamed else encode_checked(events, kind)
        return await self._publish(target, events, kind, payloads, streamed)

    async def publish_payloads(
        self, payloads: Sequence[bytes], stream: str | None = None
    ) -> list[str] | None:
        """Publish events' JSON as it is, in order, batched as `publish_many` does: for a
        caller holding JSON rather than events, such as the HTTP ingest, which keeps the
        keys a client sent that this version does not know (SPEC 3: forward compatible).
        Judged like `publish_many`'s events: BadEventError, and nothing published, when
        the consumers would refuse one."""
        target = stream or self.keys.workflow_stream
        kind = self._kind(target)
        check_payloads(payloads, kind)
        return await self._publish(target, (), kind, list(payloads), False)

    async def _publish(
        self, target: str, events: Sequence[Event], kind: str, payloads: list[bytes],
        streamed: bool,
    ) -> list[str] | None:
        """`publish_many`'s sending: `payloads`, encoded and checked, or with `streamed`
        the `events`, judged a chunk at a time."""
        async with self._send_lock:
            if self._buffer:  # keep order: nothing overtakes what is already waiting
                self._enqueue(target, payloads or encode_checked(events, kind))
                return None
            ids: list[str] = []
            pending: asyncio.Future[list[str]] | None = None
            try:
                if streamed:
                    await self._append_streamed(target, events, kind, payloads, ids)
                elif len(payloads) <= _BATCH:  # one call or none: no task, no turn of the loop
                    if payloads:
                        ids = await self._append(target, payloads)
                else:
                    for start in range(0, len(payloads), _BATCH):
                        if pending is not None:
                            ids.extend(await pending)
                        pending = asyncio.ensure_future(
                            self._append(target, payloads[start:start + _BATCH]))
                        await asyncio.sleep(0)  # let it go out before waiting on it
                    if pending is not None:
                        ids.extend(await pending)
                metrics.REDIS_UP.set(1)
            except REDIS_DOWN as exc:
                metrics.REDIS_ERRORS.labels("producer").inc()
                metrics.REDIS_UP.set(0)
                if pending is not None and not pending.done():
                    pending.cancel()
                if self.buffer_size == 0:
                    raise RedisUnavailable("publish", _url_of(self.redis), exc) from exc
                # chunks already appended are not resent; the rest is judged a chunk at a
                # time as a streamed publish is, and buffered up to a refused event's chunk
                unsent = payloads[len(ids):]
                refused: BadEventError | None = None
                for start in range(len(payloads), len(events), _BATCH):
                    try:
                        unsent += encode_checked(events, kind, start, start + _BATCH)
                    except BadEventError as bad:
                        refused = bad
                        break
                logger.warning("redis unreachable ({}); buffering {} events", exc, len(unsent))
                self._enqueue(target, unsent)
                if refused is not None:
                    raise BadEventError(
                        f"{refused.reason}; Redis became unreachable: the {len(ids)} events "
                        f"before were published and the {len(unsent)} after them buffered, "
                        f"none from its chunk on") from None
                return None
            except BaseException:
                if pending is not None and not pending.done():
                    pending.cancel()  # no call may outlive publish_many (and its lock)
                raise
        metrics.PUBLISHED.labels(target.rsplit(":", 1)[-1], self.mode).inc(len(ids))
        return ids

    def _kind(self, stream: str) -> str:
        return stream_kind(self.keys, stream)

    def _enqueue(self, stream: str, payloads: list[bytes]) -> None:
        if len(self._buffer) + len(payloads) > self.buffer_size:
            raise BufferFull(self.buffer_size)
        self._buffer.extend((stream, p) for p in payloads)
        self._drained.clear()
        metrics.PRODUCER_BUFFERED.set(len(self._buffer))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="wks-producer-flush")

    async def _append_streamed(
        self, stream: str, events: Sequence[Event], kind: str, payloads: list[bytes],
        ids: list[str],
    ) -> None:
        """Judge, encode (into `payloads`) and append `events` chunk by chunk on ONE
        connection, the next chunk sent before the previous chunk's ids are read: Redis
        executes one connection's commands in the order sent, so the stream's order is the
        call order, and Redis never waits for this process to read a reply and send the next
        chunk (with one call at a time, Redis was busy ~65% of a publish and the client the
        rest, one after the other). `ids` gets the ids of every chunk appended so far, also
        when a later one fails.

        EVAL, not EVALSHA: a NOSCRIPT reply to one chunk would come after the next chunk had
        been sent. Redis hashes the ~200-byte body and runs its cached script.

        With two chunks in flight, a lost connection leaves both unconfirmed (up to 2,000
        events): publish_many buffers and resends them, and the consumers fold a resent
        event once (its eventId). A chunk refused with an error reply (WRONGTYPE, OOM,
        scripts denied) is followed by the reply to the chunk sent behind it, which is read
        too: every write Redis refused for one chunk it refuses for the next, and should the
        next one have been appended all the same, that is logged."""
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        sent = 0  # chunks sent whose replies are not read yet
        try:
            for start in range(0, len(events), _BATCH):
                try:
                    part = encode_checked(events, kind, start, start + _BATCH)
                except BadEventError as exc:
                    while sent:  # what went out before the refused chunk: its ids
                        ids.extend(text(i) for i in await conn.read_response())
                        sent -= 1
                    if not ids:
                        raise
                    raise BadEventError(
                        f"{exc.reason}; the {len(ids)} events before its chunk were published "
                        f"(entry ids {ids[0]}..{ids[-1]}), none from it on") from None
                payloads += part
                blob = _pack.encode([p.decode() for p in part])
                await conn.send_packed_command(
                    conn.pack_command("EVAL", _APPEND, 1, stream, blob), check_health=not start)
                sent += 1
                if sent == 2:  # keep one chunk queued in Redis while this one is packed
                    ids.extend(text(i) for i in await conn.read_response())
                    sent -= 1
            while sent:
                ids.extend(text(i) for i in await conn.read_response())
                sent -= 1
        except ResponseError as exc:
            if sent > 1:  # the chunk sent behind the refused one: read its reply too
                try:
                    behind = [text(i) for i in await conn.read_response()]
                except ResponseError:
                    pass  # refused as well, as expected
                except BaseException:
                    await conn.disconnect()
                    raise
                else:
                    logger.error("a chunk of {} events was appended after the chunk before "
                                 "it was refused ({}): a retry may repeat them out of order "
                                 "(consumers fold each eventId once); ids {}..{}",
                                 len(behind), exc, behind[0], behind[-1])
            if not scripts_refused(exc):
                raise
            logger.warning("batch script refused ({}); falling back to pipelined XADD", exc)
            self.mode = "pipeline"
            payloads += encode_checked(events, kind, len(payloads))
            for start in range(len(ids), len(payloads), _BATCH):
                ids.extend(await self._append(stream, payloads[start:start + _BATCH]))
        except BaseException:
            await conn.disconnect()  # replies may be unread: nobody else may read them
            raise
        finally:
            await pool.release(conn)

    async def _append(self, stream: str, payloads: list[bytes]) -> list[str]:
        if self.mode == "script":
            try:
                blob = _pack.encode([p.decode() for p in payloads])  # str: cmsgpack has no bin
                raw = await run_script(self._script, [stream], [blob])
            except ResponseError as exc:
                if not scripts_refused(exc):
                    raise
                # scripting disabled or denied (ACL, managed Redis): pipeline from now on
                logger.warning("batch script refused ({}); falling back to pipelined XADD", exc)
                self.mode = "pipeline"
                return await self._append(stream, payloads)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for p in payloads:
                    pipe.xadd(stream, {EVENT_FIELD: p})
                raw = await pipe.execute()
        if self.durable:
            await self._wait_durable()
        return [text(r) for r in raw]

    async def _wait_durable(self) -> None:
        """Block until the write is fsynced to the AOF (WAITAOF, Redis 7.2+).

        Older servers have no WAITAOF: there an acknowledged write is durable only when the
        server itself runs `appendfsync always`. `durability` says which holds ("waitaof",
        "appendfsync always" or "none"); "none" is logged once as a warning.
        """
        if self.durability is None:
            self.durability = await self._detect_durability()
        if self.durability == "waitaof":
            await self.redis.execute_command("WAITAOF", 1, 0, 5000)

    async def _detect_durability(self) -> str:
        info = await self.redis.info("server")
        version = str(info["redis_version"])
        if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) >= (7, 2):
            return "waitaof"
        try:
            conf = await self.redis.config_get("append*")
        except ResponseError:  # CONFIG disabled (managed services): cannot tell
            conf = {}
        values = {text(k): text(v) for k, v in conf.items()}
        if values.get("appendonly") == "yes" and values.get("appendfsync") == "always":
            return "appendfsync always"
        logger.warning("durable=True, but Redis {} has no WAITAOF and is not known to run "
                       "appendfsync always: an acknowledged event can still be lost if the "
                       "Redis host crashes", version)
        return "none"

    async def _flush_loop(self) -> None:
        backoff = Backoff()
        while self._buffer:
            async with self._send_lock:
                stream = self._buffer[0][0]
                chunk: list[bytes] = []
                for s, p in self._buffer:
                    if s != stream or len(chunk) >= _BATCH:
                        break
                    chunk.append(p)
                try:
                    await self._append(stream, chunk)
                except REDIS_DOWN:
                    delay = backoff.next()
                except ResponseError as exc:
                    # reachable but refusing (OOM, READONLY, MISCONF...): keep the events and
                    # retry; a dead flusher would strand them with no error anywhere
                    if backoff.attempt == 0:
                        logger.warning("redis refused buffered events ({}); retrying", exc)
                    delay = backoff.next()
                else:
                    for _ in chunk:
                        self._buffer.popleft()
                    metrics.PRODUCER_BUFFERED.set(len(self._buffer))
                    metrics.PUBLISHED.labels(stream.rsplit(":", 1)[-1], self.mode).inc(len(chunk))
                    backoff.reset()
                    continue
            await asyncio.sleep(delay)  # Redis is down: nothing to await but time
        logger.info("producer buffer flushed")
        self._drained.set()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every buffered event has been published."""
        await asyncio.wait_for(self._drained.wait(), timeout)

    # -- one method per workflow event --------------------------------------------------------

    def _ids(self, ts: int | None, event_id: str | None) -> dict[str, Any]:
        return {"ts": now_ms() if ts is None else ts, "event_id": event_id or self.next_event_id()}

    async def started(
        self, execution_id: str, workflow_id: str, total_steps: int, *, owner: str | None = None,
        data: dict[str, Any] | None = None, ts: int | None = None, event_id: str | None = None,
    ) -> str | None:
        return await self.publish(WorkflowStarted(
            execution_id=execution_id, workflow_id=workflow_id, total_steps=total_steps,
            owner=owner, data=data, **self._ids(ts, event_id)))

    async def progress(
        self, execution_id: str, completed_steps: int, *, current_step: str | None = None,
        data: dict[str, Any] | None = None, ts: int | None = None, event_id: str | None = None,
    ) -> str | None:
        return await self.publish(WorkflowProgress(
            execution_id=execution_id, completed_steps=completed_steps, current_step=current_step,
            data=data, **self._ids(ts, event_id)))

    async def completed(
        self, execution_id: str, *, data: dict[str, Any] | None = None, ts: int | None = None,
        event_id: str | None = None,
    ) -> str | None:
        return await self.publish(WorkflowCompleted(
            execution_id=execution_id, data=data, **self._ids(ts, event_id)))

    async def failed(
        self, execution_id: str, error: str, *, ts: int | None = None,
        event_id: str | None = None,
    ) -> str | None:
        return await self.publish(WorkflowFailed(
            execution_id=execution_id, error=error[:4096], **self._ids(ts, event_id)))

    async def cancelled(
        self, execution_id: str, *, reason: str | None = None, ts: int | None = None,
        event_id: str | None = None,
    ) -> str | None:
        return await self.publish(WorkflowCancelled(
            execution_id=execution_id, reason=reason, **self._ids(ts, event_id)))

    async def request_backup(
        self, request_id: str | None = None, *, backup_type: str = "manual",
        requested_by: str | None = None,
    ) -> tuple[str, str | None]:
        """Publish `backup.requested`; returns (requestId, entry id)."""
        rid = request_id or uuid.uuid4().hex
        event = BackupRequested(request_id=rid, backup_type=backup_type,  # type: ignore[arg-type]
                                requested_by=requested_by, ts=now_ms())
        return rid, await self.publish(event, self.keys.backup_stream)

    def with_ids(self, event: WorkflowEvent) -> WorkflowEvent:
        """`event` with an eventId filled in when it has none (used by batch publishers)."""
        if event.event_id is not None:
            return event
        return msgspec.structs.replace(event, event_id=self.next_event_id())

    @contextlib.asynccontextmanager
    async def track(
        self, execution_id: str, workflow_id: str, total_steps: int, *,
        owner: str | None = None, data: dict[str, Any] | None = None,
    ) -> AsyncIterator[Tracker]:
        """Emit started, then progress per step, then completed, or failed on an exception."""
        await self.started(execution_id, workflow_id, total_steps, owner=owner, data=data)
        tracker = Tracker(self, execution_id, total_steps)
        try:
            yield tracker
        except asyncio.CancelledError:
            await self.cancelled(execution_id, reason="cancelled")
            raise
        except BaseException as exc:
            await self.failed(execution_id, f"{type(exc).__name__}: {exc}")
            raise
        await self.completed(execution_id, data=tracker.result or None)


class Tracker:
    """Progress of one execution inside `Producer.track`."""

    def __init__(self, producer: Producer, execution_id: str, total_steps: int) -> None:
        self.producer = producer
        self.execution_id = execution_id
        self.total_steps = total_steps
        self.completed_steps = 0
        self.result: dict[str, Any] = {}

    async def step(
        self, name: str | None = None, *, completed: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> str | None:
        """Mark a step done (or set the count with `completed=`) and publish progress."""
        self.completed_steps = self.completed_steps + 1 if completed is None else completed
        return await self.producer.progress(
            self.execution_id, self.completed_steps, current_step=name, data=data)
