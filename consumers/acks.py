"""Acknowledging a batch and writing its dead letters (SPEC section 5).

A dead letter carries the original stream, entry id, group, raw payload, reason, delivery
count and time. It is written only by the call whose XACK took the entry off the pending list
(one Lua script), so an entry handled twice (taken over by XAUTOCLAIM while its first consumer
was still busy with it) is dead-lettered once. Where scripts are refused the letters and the
XACK go in one MULTI instead.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from wks.keys import EVENT_FIELD, Keys
from wks.redis import run_script, scripts_refused, text

_json = msgspec.json.Encoder()

# KEYS[1] = the stream, KEYS[2] = the dead stream (only with letters); ARGV[1] = group,
# ARGV[2] = fields per letter, ARGV[3] = number of letters, then per letter: entry id, field,
# value, ...; last, the other ids of the batch in one space-separated argument (packing 10,000
# ids as 10,000 arguments cost the consumer's thread ~1.5 us each in redis-py). A letter is
# written only by the call whose XACK took the entry off the pending list, so an entry
# handled twice (taken over by XAUTOCLAIM while its first consumer was still busy with it)
# is dead-lettered once.
_ACK = """
local width = tonumber(ARGV[2]) * 2
local i = 4
local added = 0
for _ = 1, tonumber(ARGV[3]) do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 1, i + width))
    added = added + 1
  end
  i = i + 1 + width
end
local ids, n = {}, 0
for id in string.gmatch(ARGV[i], '%S+') do
  n = n + 1
  ids[n] = id
  if n == 500 then
    redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
    ids, n = {}, 0
  end
end
if n > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
return added
"""


class RawEntry(msgspec.Struct):
    """A stream entry as read, before decoding (a Struct: made for every entry read, and a
    dataclass's __init__ cost several times as much)."""

    entry_id: str
    fields: dict[bytes, bytes] | None  # None: deleted from the stream while pending
    deliveries: int = 1


def reason_kind(reason: str) -> str:
    """The metric label for a dead letter's reason."""
    if reason.startswith("not JSON"):
        return "not_json"
    if "byte limit" in reason or "over the" in reason:
        return "oversized"
    if reason.startswith("delivered"):
        return "max_deliveries"
    if reason.startswith("entry has no"):
        return "missing_field"
    if reason.startswith("apply failed"):
        return "apply_failed"
    return "invalid"


class Acknowledger:
    """XACK for one (stream, group), with the dead letters of the batch."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, stream: str, group: str) -> None:
        self.redis = redis
        self.keys = keys
        self.stream = stream
        self.group = group
        self.log = logger.bind(stream=stream, group=group)
        self._script: Any = redis.register_script(_ACK)  # None once refused

    async def ack(self, ids: list[str], dead: list[tuple[RawEntry, str]]) -> None:
        """Acknowledge `ids`, and write a dead letter for each of `dead` (among them)."""
        if not ids:
            return
        now = str(int(time.time() * 1000))
        if self._script is not None:
            try:
                await self._ack_once(ids, dead, now)
                return
            except ResponseError as exc:
                if not scripts_refused(exc):
                    raise
                self.log.warning("acknowledgement script refused ({}); using XACK and MULTI",
                                 exc)
                self._script = None
        if not dead:
            await self.redis.xack(self.stream, self.group, *ids)  # one command, no MULTI
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for raw, reason in dead:
                pipe.xadd(self.keys.dead_stream, self._fields(raw, reason, now))
            pipe.xack(self.stream, self.group, *ids)
            await pipe.execute()
        for raw, reason in dead:
            self.log.bind(entry_id=raw.entry_id).warning("dead letter: {}", reason)

    async def _ack_once(self, ids: list[str], dead: list[tuple[RawEntry, str]], now: str) -> None:
        """Acknowledge the batch; write each dead letter only if this call acknowledged it."""
        letters = [self._fields(raw, reason, now) for raw, reason in dead]
        args: list[Any] = [self.group, len(letters[0]) if letters else 0, len(letters)]
        for (raw, _reason), fields in zip(dead, letters, strict=True):
            args.append(raw.entry_id)
            for name, value in fields.items():
                args += (name, value)
        dead_ids = {raw.entry_id for raw, _reason in dead}
        args.append(" ".join(i for i in ids if i not in dead_ids) if dead_ids else " ".join(ids))
        keys = [self.stream, self.keys.dead_stream] if dead else [self.stream]
        assert self._script is not None
        await run_script(self._script, keys, args)
        for raw, reason in dead:
            self.log.bind(entry_id=raw.entry_id).warning("dead letter: {}", reason)

    def _fields(self, raw: RawEntry, reason: str, now: str) -> dict[str, Any]:
        fields = raw.fields or {}
        payload = fields.get(EVENT_FIELD)
        if payload is None:
            # a producer's field names and values: any bytes, kept readable and reversible
            payload = _json.encode({text(k, "backslashreplace"): text(v, "backslashreplace")
                                    for k, v in fields.items()})
        return {
            "stream": self.stream,
            "entryId": raw.entry_id,
            "group": self.group,
            "payload": payload,
            "reason": reason,
            "deliveries": str(raw.deliveries),
            "deadAt": now,
        }
