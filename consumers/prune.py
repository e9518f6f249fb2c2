"""Removing the names of consumers that are gone from a group.

Every worker process reads under a name of its own (host, pid, a random suffix), and Redis
keeps a consumer in its group until it is deleted: each restart left one more name in
`XINFO CONSUMERS`, which the backup route and `wks restore` read to tell whether a worker is
running. A consumer is removed only when it holds no pending entry and has not tried to
read for `min_idle` (a running one re-reads at least every second). The check and the
XGROUP DELCONSUMER run in one script, so an entry read in between cannot be dropped from
the pending list with its consumer; where scripts are refused nothing is removed.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from wks.redis import run_script, scripts_refused

# consumers idle this long (seconds) and holding nothing are taken out of their group
PRUNE_IDLE = 3600.0

# KEYS[1] = the stream; ARGV[1] = the group, ARGV[2] = the least idle time (ms), ARGV[3] = the
# caller's own name (kept). XINFO CONSUMERS gives each consumer as name, value, ... pairs.
_PRUNE = """
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) and f['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
"""


class ConsumerPruner:
    """Removes a group's departed consumers (see the module's text)."""

    def __init__(self, redis: aioredis.Redis, stream: str, group: str, own: str,
                 min_idle: float = PRUNE_IDLE) -> None:
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
        try:
            return int(await run_script(
                self._script, [self.stream], [self.group, self.min_idle_ms, self.own]))
        except ResponseError as exc:
            if scripts_refused(exc):
                self._script = None
                return 0
            raise
