"""Removing the names of consumers that are gone from a group.

Every worker process reads under a name of its own (host, pid, a random suffix), and Redis
keeps a consumer in its group until it is deleted: each restart left one more name in
`XINFO CONSUMERS` and in the group's consumer count that /health shows. A consumer is
removed only when it holds no pending entry, has had nothing delivered for `min_idle`
(XINFO's `idle`; before Redis 7.2 a read that finds nothing does not reset it) and keeps no
heartbeat (wks.liveness): a running consumer on a quiet stream stays. The check and the
XGROUP DELCONSUMER run in one script, so an entry read in between cannot be dropped from
the pending list with its consumer; where scripts are refused nothing is removed.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from wks.keys import Keys
from wks.liveness import running_consumers
from wks.redis import run_script, scripts_refused

# consumers idle this long (seconds) and holding nothing are taken out of their group
PRUNE_IDLE = 3600.0

# KEYS[1] = the stream; ARGV[1] = the group, ARGV[2] = the least idle time (ms), then the
# names to keep (the caller's, those with a heartbeat). XINFO CONSUMERS gives each consumer
# as name, value, ... pairs.
_PRUNE = """
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) and not keep[f['name']] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
"""


class ConsumerPruner:
    """Removes a group's departed consumers (see the module's text)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, stream: str, group: str, own: str,
                 min_idle: float = PRUNE_IDLE) -> None:
        self.redis = redis
        self.keys = keys
        self.stream = stream
        self.group = group
        self.own = own
        self.min_idle_ms = max(0, int(min_idle * 1000))
        self._script: Any = redis.register_script(_PRUNE)  # None once refused

    async def prune(self) -> int:
        """How many consumers were removed. Redis errors other than a refused script are
        the caller's to handle."""
        if self._script is None:
            return 0
        keep = {self.own, *await running_consumers(self.redis, self.keys, self.group)}
        try:
            return int(await run_script(
                self._script, [self.stream], [self.group, self.min_idle_ms, *sorted(keep)]))
        except ResponseError as exc:
            if scripts_refused(exc):
                self._script = None
                return 0
            raise
