"""Running long-lived services in one process: Redis connection, signals, shutdown.

Shutdown in two steps: the first SIGTERM/SIGINT sets `stop` (services read nothing more and
finish the batch in hand); if they have not returned within `shutdownGrace`, or a second
signal arrives, they are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from loguru import logger

from wks.config import Settings
from wks.managed import MANAGED_DIR, Abandoned, Managed, adopt, start_managed
from wks.redis import client, host_port, ping

Service = Callable[[asyncio.Event], Awaitable[None]]
T = TypeVar("T")


@dataclass
class Runtime:
    """What the services of one process share."""

    settings: Settings
    redis: aioredis.Redis
    url: str
    mode: str  # managed | external
    server: Managed | None = None  # the managed server, when this process owns it
    readers: dict[str, Any] = field(default_factory=dict)  # group -> GroupReader (for /health)


class StoppedStarting(Exception):
    """A signal came while `wks up` waited for the managed server: nothing to stop."""


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, manage: bool = False, resume: bool = False,
    halt: threading.Event | None = None,
) -> AsyncIterator[Runtime]:
    """Connect to the configured Redis; with `manage`, start the embedded one when none is.
    With `resume`, start it only when its data directory exists: a `wks up` of this
    directory kept its streams there, and stopping it stopped that server (an offline
    restore needs the stream, not a server on 6379 that never held it). A managed server
    that a killed `wks up` left running is adopted by the next one (`wks.managed`).
    `halt`, set by a signal, ends a wait for another `wks up`'s server: StoppedStarting."""
    server: Managed | None = None
    url = settings.redis_url
    mode = "external" if settings.redis_url_source in ("env", "toml") else "managed"
    managed_data = settings.var_dir / MANAGED_DIR
    if (manage or (resume and managed_data.is_dir())) \
            and settings.redis_url_source in ("file", "default"):
        hp = host_port(url) if url else None
        if hp is None or not ping(*hp):
            halt = halt or threading.Event()
            try:
                started = await _owned(halt, start_managed, settings.var_dir, halt=halt)
            except Abandoned:
                raise StoppedStarting from None
            if isinstance(started, str):
                url = started
                logger.info("using the managed redis-server at {} that another `wks up` of "
                            "this directory started", url)
            else:
                server, url = started, started.url
                logger.info("started managed redis-server {} at {}", server.binary, url)
        elif manage:
            server = await _owned(halt or threading.Event(), adopt, settings.var_dir, url)
            if server is not None:
                logger.warning("adopted the managed redis-server at {} (pid {}) that a `wks up` "
                               "which did not stop left running; it stops with this one",
                               url, server.pid)
            else:
                logger.info("using the redis-server at {} named by {}; another `wks up` "
                            "owns it (or it is not this directory's): it is left running",
                            url, settings.var_dir / "redis.url")
    url = url or settings.effective_redis_url()
    redis = client(url)
    try:
        yield Runtime(settings, redis, url, mode, server)
    finally:
        await redis.aclose()
        if server is not None:
            await asyncio.to_thread(server.stop)


@dataclass
class Signals:
    """SIGTERM/SIGINT as events: the first sets `stop`, a second sets `abort`."""

    grace: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    halt: threading.Event = field(default_factory=threading.Event)  # `stop`, for threads
    supervised: bool = False  # the services run: `supervise` answers `abort`
    interrupted: bool = False

    def on_signal(self, signame: str) -> None:
        if not self.stop.is_set():
            logger.info("{}: stopping; finishing the batch in hand (grace {}s)",
                        signame, self.grace)
            self.stop.set()
            self.halt.set()
        elif self.supervised:
            logger.warning("{} again: aborting now", signame)
            self.abort.set()
        elif not self.interrupted:
            # still starting: nothing waits for `abort`, so end now, as an interrupt does
            # (exit 130), once; the server being started is stopped on the way out
            logger.warning("{} again: aborting start-up", signame)
            self.interrupted = True
            raise KeyboardInterrupt
        else:
            logger.warning("{} again: already stopping the server being started", signame)


@contextlib.contextmanager
def catch_signals(grace: float) -> Iterator[Signals]:
    """Handle SIGTERM/SIGINT from here on. Entered before start-up (a managed redis-server
    may take seconds to start or adopt): a signal then ends start-up through the normal
    shutdown, which stops that server, instead of killing the process and leaving it."""
    signals = Signals(grace)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.on_signal, sig.name)
    try:
        yield signals
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _owned(abandon: threading.Event, start: Callable[..., T], *args: Any,
                 **kwargs: Any) -> T:
    """`start(*args, **kwargs)` on a worker thread, for a server this process then owns.
    Cancelled meanwhile (an interrupt during start-up), it sets `abandon`, which `start` reads
    before starting anything, waits for the thread (a cancellation cannot stop it) and
    stops the server it made instead of leaving it running. A plain future, not a task:
    at an interrupt asyncio cancels every task, this one too."""
    made = asyncio.get_running_loop().run_in_executor(
        None, functools.partial(start, *args, **kwargs))
    try:
        return await asyncio.shield(made)
    except asyncio.CancelledError:
        abandon.set()
        with contextlib.suppress(Exception):
            server = await made
            if isinstance(server, Managed):
                server.stop()  # blocking: the process is on its way out
        raise


async def supervise(services: dict[str, Service], grace: float,
                    signals: Signals | None = None) -> int:
    """Run services until they return or a signal stops them; the exit code. Without
    `signals`, the handlers are installed for the services' lifetime only."""
    if signals is None:
        with catch_signals(grace) as own:
            return await supervise(services, grace, own)
    stop, abort = signals.stop, signals.abort
    if stop.is_set():
        logger.info("stopped during start-up")
        return 0
    signals.supervised = True
    failures: list[str] = []

    async def guard(name: str, service: Service) -> None:
        try:
            await service(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.opt(exception=exc).error("service {} failed: {}", name, exc)
            failures.append(name)
            stop.set()  # take the rest down gracefully

    tasks = [asyncio.create_task(guard(n, s), name=n) for n, s in services.items()]
    everything = asyncio.gather(*tasks)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([everything, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            aborted = asyncio.create_task(abort.wait())
            await asyncio.wait([everything, aborted], timeout=grace,
                               return_when=asyncio.FIRST_COMPLETED)
            aborted.cancel()
            if not everything.done():
                logger.warning("services still running after the grace time; cancelling")
                for t in tasks:
                    t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everything
    finally:
        stopped.cancel()
    return 1 if failures else 0
