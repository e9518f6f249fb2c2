"""Writing the Redis mirror of a batch of states in one server call.

The mirror of a batch is, per execution: replace the hash `wks:workflow:{id}` with the
state's fields, then either set its TTL and drop the id from `wks:executions:active`
(terminal) or add the id to that set. Sent as a pipeline that is ~5 commands and ~30
arguments per execution, and redis-py spends ~60 us of Python per command packing and
parsing: with a few hundred executions per batch that was most of the fold's time. One Lua
call with the whole batch as one msgpack argument does the same work atomically (like the
MULTI it replaces) for a fraction of the client CPU. Where scripts are refused (ACLs, some
managed services) it falls back to the MULTI pipeline and says so once.
"""

from __future__ import annotations

import asyncio
from typing import cast

import msgspec
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import NoScriptError, ResponseError

from wks.keys import Keys
from wks.redis import run_script, scripts_refused
from wks.resp import mux_of
from wks.state import TERMINAL, State, mirror_fields, mirror_pairs

# KEYS[1] = the active set, KEYS[1 + i] = the hash of row i.
# ARGV[1] = TTL in ms for terminal states; ARGV[2] = msgpack [[terminal, id, f, v, ...], ...]
_MIRROR = """
local rows = cmsgpack.unpack(ARGV[2])
for i, row in ipairs(rows) do
  local key = KEYS[i + 1]
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(row, 3))
  if row[1] == 1 then
    redis.call('PEXPIRE', key, ARGV[1])
    redis.call('SREM', KEYS[1], row[2])
  else
    redis.call('SADD', KEYS[1], row[2])
  end
end
return #rows
"""
_CHUNK = 500  # executions per call: bounds the script's run time and argument count
_pack = msgspec.msgpack.Encoder()


def _row(s: State) -> list[object]:
    """[terminal, id, field, value, ...]: the script's row for one state."""
    row = cast(list[object], mirror_pairs(s))  # a new list: the head goes in front
    row[:0] = (1 if s.status in TERMINAL else 0, s.execution_id)
    return row


class MirrorWriter:
    """Writes states to the mirror hashes and the active set (script, else MULTI pipeline)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, state_ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.state_ttl_ms = state_ttl_ms
        self.mode = "script"
        self._script = redis.register_script(_MIRROR)

    async def write(self, states: list[State]) -> None:
        if self.mode == "script":
            try:
                await self._write_script(states)
                return
            except ResponseError as exc:
                if not scripts_refused(exc):
                    raise
                logger.warning("mirror script refused ({}); using MULTI pipelines", exc)
                self.mode = "pipeline"
        for start in range(0, len(states), _CHUNK):  # every state again: each write is whole
            await self._write_pipeline(states[start:start + _CHUNK])

    async def _write_script(self, states: list[State]) -> None:
        """Every chunk's script call sent at once: on the client's lean connection, or in
        one pipeline. Awaited chunk by chunk, each reply waited for a turn of an event loop
        busy reading and decoding the next batch, and the batch's COMMIT waited for the last
        of them."""
        keys = self.keys
        calls: list[tuple[list[object], list[object]]] = []  # (keys, args) per script call
        for start in range(0, len(states), _CHUNK):
            names: list[object] = [keys.active]
            rows = []
            for state in states[start:start + _CHUNK]:
                names.append(keys.workflow(state.execution_id))
                rows.append(_row(state))
            calls.append((names, [self.state_ttl_ms, _pack.encode(rows)]))
        if len(calls) == 1:  # the usual small batch: no pipeline object to build
            names, args = calls[0]
            await run_script(self._script, names, args)  # loads on NOSCRIPT
            return
        if mux_of(self.redis) is not None:  # all in flight on the one lean connection
            # every call answered before the batch goes on (or rolls back): none outlives it
            replies = await asyncio.gather(
                *(run_script(self._script, n, a) for n, a in calls), return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return
        for _ in range(2):  # a second time after loading the script (Redis restarted empty)
            async with self.redis.pipeline(transaction=False) as pipe:
                for names, args in calls:
                    pipe.evalsha(self._script.sha, len(names), *names, *args)
                replies = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in replies):
                break
            await self.redis.script_load(_MIRROR)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    async def _write_pipeline(self, states: list[State]) -> None:
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            for state in states:
                key = keys.workflow(state.execution_id)
                pipe.delete(key)
                pipe.hset(key, mapping=mirror_fields(state))  # type: ignore[arg-type]
                if state.status in TERMINAL:
                    pipe.pexpire(key, self.state_ttl_ms)
                    pipe.srem(keys.active, state.execution_id)
                else:
                    pipe.sadd(keys.active, state.execution_id)
            await pipe.execute()
