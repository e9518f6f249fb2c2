"""The error tree. Every error names the operation and the key or path it concerns.

    WksError
     ├── ConfigError            a bad setting; the CLI prints it as one line and exits 2
     ├── BadEventError          an event failed decoding or validation (permanent: dead letter)
     ├── TransientError         worth retrying: Redis unreachable, SQLite busy, disk full
     │    └── RedisUnavailable
     ├── StoreError             SQLite failed in a way a retry will not fix
     ├── LockError              a lock could not be taken, or was lost
     │    └── StaleFencingToken a holder whose lock expired tried to commit
     ├── BufferFull             the producer's offline buffer is full: nothing was dropped,
     │                          the caller must slow down or fail
     ├── BackupError            a backup, verify or restore step failed
     ├── ManagedRedisError      `wks up`'s own redis-server could not be started or reached
     └── NotFound               an id that does not exist (API 404, CLI exit 1)
"""

from __future__ import annotations


class WksError(Exception):
    """Base of every error raised on purpose by wks."""


class ConfigError(WksError):
    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


class BadEventError(WksError):
    """Permanent: the same bytes will fail the same way, so they go to the dead-letter stream."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(WksError):
    """A retry with backoff can succeed."""


class RedisUnavailable(TransientError):
    def __init__(self, operation: str, url: str, cause: BaseException | None = None) -> None:
        detail = f": {cause}" if cause else ""
        super().__init__(f"{operation}: Redis at {url} unreachable{detail} (retrying can help)")


class StoreError(WksError):
    def __init__(self, operation: str, path: str, cause: BaseException | None = None) -> None:
        detail = f": {cause}" if cause else ""
        super().__init__(f"{operation} on {path} failed{detail}")
        self.operation = operation
        self.path = path


class LockError(WksError):
    pass


class StaleFencingToken(LockError):
    def __init__(self, name: str, token: int, current: int) -> None:
        super().__init__(
            f"lock {name!r}: fencing token {token} is stale (current {current}); commit refused"
        )
        self.name = name
        self.token = token
        self.current = current


class BufferFull(WksError):
    def __init__(self, capacity: int) -> None:
        super().__init__(
            f"producer buffer full ({capacity} events) while Redis is unreachable; "
            "nothing was dropped, this event was not accepted"
        )
        self.capacity = capacity


class ManagedRedisError(WksError, RuntimeError):
    """The managed redis-server (SPEC section 10) could not be started, or another `wks up`
    of the directory holds it and it does not answer. A RuntimeError too, as it was."""


class BackupError(WksError):
    def __init__(self, operation: str, path: str, reason: str) -> None:
        super().__init__(f"{operation} {path}: {reason}")
        self.operation = operation
        self.path = path
        self.reason = reason


class NotFound(WksError):
    pass
