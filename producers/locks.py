"""Locks for producers: e.g. a workflow runner making sure one worker runs an execution.

    async with Lock(redis, keys, f"execution:{execution_id}", ttl=60) as lock:
        ...  # renewed every 20 s while the work runs; `lock.lost` is set if it is lost
"""

from wks.locks import Lock, execute_with_lock, is_locked, lock, unlock

__all__ = ["Lock", "execute_with_lock", "is_locked", "lock", "unlock"]
