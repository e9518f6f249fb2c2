"""The managed redis-server of `wks up` (SPEC section 10): data under var/redis, its URL in
var/redis.url, and one owner at a time, which stops it on its way out.

The owner holds an exclusive lock on var/redis.lock for as long as it runs, and the kernel
releases that lock however the owner ends. So a `wks up` that finds var/redis.url's server
answering can tell a live owner (the lock is taken: it uses the server and leaves it running)
from one that was killed (kill -9, the OOM killer): then it adopts the server, found by
var/redis.pid and checked against its command line, and stops it on exit as if it had
started it. Without the lock a killed `wks up` left its server running for good. A `wks up`
that finds the lock taken and no server answering yet (two started at once) waits for the
holder's server rather than starting a second one on the same data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from wks import managed_binary
from wks.errors import ManagedRedisError
from wks.redis import RedisServer, free_port, host_port, ping, port_is_free

MANAGED_DIR = "redis"  # the managed server's data, under the var directory
_LOCK = "redis.lock"  # held by the process that owns the managed server
_PID = "redis.pid"  # the managed server's process id, for whoever adopts it
OWNER_WAIT = 30.0  # how long a `wks up` waits for the server another one is starting here


@dataclass
class Managed:
    """The managed server this process owns: started here, or adopted."""

    var_dir: Path
    url: str
    pid: int
    binary: str
    lock: int | None  # the lock file's descriptor
    server: RedisServer | None = None  # None: adopted, not this process's child

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits), SIGKILL if it hangs; then the URL and
        pid files go, and the lock."""
        try:
            if self.server is not None:
                self.server.stop(timeout)
            else:
                _stop_pid(self.pid, timeout,
                          lambda: _left_server(self.var_dir, self.url) is not None)
        finally:
            remove_url_file(self.var_dir / "redis.url", self.url)
            if self.lock is not None:
                with contextlib.suppress(OSError):
                    if (self.var_dir / _PID).read_text().strip() == str(self.pid):
                        (self.var_dir / _PID).unlink()
                os.close(self.lock)
                self.lock = None


class Abandoned(Exception):
    """`halt` was set before a server was started: nothing was started."""


def start_managed(var_dir: Path, preferred_port: int = 6379, wait: float = OWNER_WAIT,
                  halt: threading.Event | None = None) -> Managed | str:
    """The embedded default for `wks up`: loopback, AOF on, data under var/redis. A str: the
    URL of the server another `wks up` of this directory owns (it holds the lock: it is
    starting one, or runs one that did not answer at first), used and left to it. Two
    servers on one var/redis would share its append-only file. `halt` (a signal during
    start-up) ends a wait for that other server, and anything not yet started: Abandoned."""
    halt = halt or threading.Event()
    lock = _claim(var_dir)
    if lock is None:
        found = _owner_or_lock(var_dir, wait, halt)
        if isinstance(found, str):
            return found
        lock = found
    server: RedisServer | None = None
    try:
        # a server whose owner was killed before it wrote var/redis.url: this directory's
        # too, on its append-only file; stopped (it flushes that file) before another starts
        left = _left_server(var_dir, None)
        if left is not None:
            _stop_pid(left[0], 10.0, lambda: _left_server(var_dir, None) is not None)
        if halt.is_set():
            raise Abandoned
        # chosen under the lock: the last owner may have run a newer server on the data
        binary = managed_binary.choose(var_dir, var_dir / MANAGED_DIR)
        port = preferred_port if port_is_free(preferred_port) else free_port()
        server = RedisServer(binary, var_dir / MANAGED_DIR, port).start()
        assert server.proc is not None
        if (line := managed_binary.newer_record(var_dir, binary)) is not None:
            _write(var_dir / managed_binary.RECORD, line)
        _write(var_dir / _PID, str(server.proc.pid))
        _write(var_dir / "redis.url", server.url)
    except BaseException:
        if server is not None:
            server.stop()
        os.close(lock)
        raise
    return Managed(var_dir, server.url, server.proc.pid, str(binary), lock, server)


def _owner_or_lock(var_dir: Path, wait: float, halt: threading.Event) -> str | int:
    """Wait for the lock holder's server to answer at var/redis.url (its URL), or for the
    lock, should the holder end first (its descriptor). Past `wait`, an error."""
    logger.info("another `wks up` holds {}: waiting up to {:g}s for its redis-server",
                var_dir / _LOCK, wait)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        url = _answering(var_dir / "redis.url")
        if url is not None:
            return url
        lock = _claim(var_dir)
        if lock is not None:
            return lock
        if halt.wait(0.1):  # another process's start-up: no event of its own to await
            raise Abandoned
    raise ManagedRedisError(
        f"another `wks up` holds {var_dir / _LOCK} but its Redis does not answer at "
        f"{var_dir / 'redis.url'} after {wait:g}s; stop that process, or set WKS_REDIS_URL")


def _answering(path: Path) -> str | None:
    """The URL in `path` if a Redis answers there."""
    try:
        url = path.read_text().strip()
    except OSError:
        return None
    hp = host_port(url)
    return url if hp is not None and ping(*hp) else None


def adopt(var_dir: Path, url: str) -> Managed | None:
    """The server answering at `url`, when a `wks up` that was killed left it: nobody holds
    the lock, and var/redis.pid names a redis-server of this var/redis on that port. None
    otherwise (a live owner, or a server that is not this directory's): it is used as it is
    and left running."""
    lock = _claim(var_dir)
    if lock is None:
        return None
    found = _left_server(var_dir, url)
    if found is None:
        os.close(lock)
        return None
    pid, binary = found
    return Managed(var_dir, url, pid, binary, lock)


def _claim(var_dir: Path) -> int | None:
    """The lock's descriptor, held until closed or this process ends; None when taken."""
    var_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(var_dir / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _left_server(var_dir: Path, url: str | None) -> tuple[int, str] | None:
    """(pid, binary) of var/redis.pid's process if it is the managed redis-server of this
    directory serving `url`'s port (any port without `url`), else None. Redis renames its
    process ("redis-server 127.0.0.1:6379"), so it is known by that title or its arguments
    (name and port), and by its working directory (it changes into its --dir)."""
    try:
        pid = int((var_dir / _PID).read_text().strip())
        cwd = os.readlink(f"/proc/{pid}/cwd")
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None  # no pid file, no such process, or no /proc (not Linux): not adopted
    args = title.split(b"\0")
    on_port = url is None  # without a URL, any port; with one, its port (a TCP URL's)
    hp = None if url is None else host_port(url)
    if hp is not None:
        port = str(hp[1]).encode()
        on_port = re.search(rb":%s\b" % port, args[0]) is not None \
            or (b"--port", port) in set(itertools.pairwise(args))
    if b"redis-server" in args[0] and on_port and cwd == str((var_dir / MANAGED_DIR).resolve()):
        return pid, args[0].split()[0].decode(errors="replace")
    return None


def _stop_pid(pid: int, timeout: float, still_it: Callable[[], bool]) -> None:
    """Stop a process that is not this one's child (no exit status to wait for). `still_it`
    is asked before each signal: a server that exited meanwhile may have left its pid to an
    unrelated process, which must not be signalled."""
    if not still_it():
        return  # gone already: whatever has its pid now is not ours to wait for
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() > deadline:
            if not still_it():
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0  # SIGKILL cannot be refused: only its delivery
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            return
        time.sleep(0.02)  # polling: another process's exit is no event here


def _running(pid: int) -> bool:
    """Is `pid` alive? A zombie (exited, its new parent not yet reaping it) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


def remove_url_file(path: Path, url: str) -> None:
    """Remove the URL file, unless another `wks up` has replaced it since."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == url:
            path.unlink()
