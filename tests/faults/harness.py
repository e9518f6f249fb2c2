"""The process side of the fault suite: a private redis-server, `wks worker` processes, and
the faults (SIGKILL, SIGSTOP/SIGCONT, redis-server kill and restart).

Consumers run exactly as in production, `python -m wks.cli.__main__ worker --group state`,
configured only through WKS_* variables, logging JSON lines to a file per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tests.helpers import wait_for
from wks.keys import GROUP_STATE, Keys
from wks.redis import REDIS_DOWN, RedisServer, client, free_port

REPO = Path(__file__).resolve().parents[2]


async def health(base: str) -> dict[str, Any] | None:
    """GET /health: its JSON body with the HTTP status as `httpStatus`; None if unreachable."""
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"{base}/health", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            body: dict[str, Any] = await resp.json()
            body["httpStatus"] = resp.status
            return body
    except (aiohttp.ClientError, TimeoutError):
        return None


class Worker:
    """One `wks worker --group state` process."""

    def __init__(self, env: dict[str, str], log_path: Path,
                 command: tuple[str, ...] = ("worker", "--group", "state")) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wks.cli.__main__", *command],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no finally blocks, no acknowledgement of the batch in hand."""
        if self.alive:
            self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def terminate(self, timeout: float = 15.0) -> int:
        if self.stopped:
            self.resume()
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines, e.g. a traceback, as `raw`)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line, "msg": line})
        return out

    def logged(self, text: str) -> bool:
        return any(text in str(rec.get("msg", "")) for rec in self.logs())

    def close(self) -> None:
        if self.stopped:
            with contextlib.suppress(ProcessLookupError):
                self.resume()
        self.kill()
        self._log.close()


class Rig:
    """One redis-server, one SQLite file, one key prefix, and the workers folding into it."""

    def __init__(self, server: RedisServer, workdir: Path, prefix: str,
                 claim_idle: float = 1.0, db_path: Path | None = None) -> None:
        self.server = server
        self.workdir = workdir
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.db_path = db_path or workdir / "wks.db"
        self.claim_idle = claim_idle
        self.workers: list[Worker] = []
        self.apis: list[Worker] = []
        self.redis: aioredis.Redis = client(server.url, timeout=5.0)
        self.faults = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("WKS_", "REDIS_", "DATABASE_PATH"))}
        env.update({
            "WKS_REDIS_URL": self.server.url,
            "WKS_PREFIX": self.prefix,
            "WKS_DB_PATH": str(self.db_path),
            "WKS_VAR_DIR": str(self.workdir / "var"),
            "WKS_CLAIM_IDLE": f"{self.claim_idle}s",
            "WKS_SHUTDOWN_GRACE": "5s",
            "WKS_LOG_FORMAT": "json",
            "WKS_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def spawn(self, **extra: str) -> Worker:
        n = len(self.workers)
        worker = Worker(self.env(**extra), self.workdir / f"worker-{n}.log")
        self.workers.append(worker)
        return worker

    async def spawn_api(self) -> tuple[Worker, str]:
        """`wks api` as a process on a free loopback port; its base URL once /health answers."""
        port = free_port()
        env = self.env(WKS_HOST="127.0.0.1", WKS_PORT=str(port),
                       WKS_JWT_SECRET="fault-suite-secret-" + "x" * 32)
        api = Worker(env, self.workdir / "api.log", ("api",))
        self.apis.append(api)
        base = f"http://127.0.0.1:{port}"
        await wait_for(lambda: health(base), 30, "the API answering /health")
        return api, base

    @property
    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    async def consumer_of(self, worker: Worker) -> str | None:
        """The group consumer name of a worker (it carries the process id), once it has one.

        Redis before 7.2 creates a consumer only when something is delivered to it.
        """
        tag = f"-{worker.pid}-"
        consumers = await self.redis.xinfo_consumers(self.keys.workflow_stream, GROUP_STATE)
        for c in consumers:
            name = c["name"].decode()
            if tag in name:
                return str(name)
        return None

    async def pending_of(self, worker: Worker) -> int:
        """Entries delivered to this worker and not yet acknowledged."""
        name = await self.consumer_of(worker)
        return 0 if name is None else await self.pending(name)

    async def pending(self, consumer: str | None = None) -> int:
        """Entries delivered and not yet acknowledged (for one consumer, or the group)."""
        stream = self.keys.workflow_stream
        if consumer is None:
            info = await self.redis.xpending(stream, GROUP_STATE)
            return int(info["pending"])
        rows = await self.redis.xpending_range(stream, GROUP_STATE, min="-", max="+",
                                               count=100_000, consumername=consumer)
        return len(rows)

    async def drained(self) -> bool:
        """Every entry delivered to the group and acknowledged."""
        stream = self.keys.workflow_stream
        try:
            info = await self.redis.xinfo_stream(stream)
            groups = await self.redis.xinfo_groups(stream)
        except (*REDIS_DOWN, ResponseError):
            return False
        for g in groups:
            if g["name"].decode() == GROUP_STATE:
                return (g["last-delivered-id"] == info["last-generated-id"]
                        and int(g["pending"]) == 0)
        return False

    async def settle(self, timeout: float = 60.0) -> None:
        """Await the group drained: nothing unread, nothing pending (claimIdle + polls)."""
        try:
            await wait_for(self.drained, timeout, "the state group drained (0 pending, 0 unread)")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last consumer errors: {self.errors()[-3:]}") from None

    def errors(self) -> list[str]:
        """The ERROR log lines of every worker so far (for failure messages)."""
        return [f"{w.pid}: {rec.get('msg')}" for w in self.workers for rec in w.logs()
                if rec.get("level") == "ERROR" or "raw" in rec]

    async def stream_keys(self) -> list[str]:
        """eventIds of the workflow stream's entries, in stream order."""
        out = []
        for _id, fields in await self.redis.xrange(self.keys.workflow_stream):
            raw = fields.get(b"event")
            if raw is not None:
                with contextlib.suppress(ValueError):
                    key = json.loads(raw).get("eventId")
                    if key:
                        out.append(key)
        return out

    def write_lock_free(self) -> bool:
        """Could a writer take SQLite's write lock right now (nobody inside a transaction)?"""
        conn = sqlite3.connect(self.db_path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        finally:
            conn.close()

    async def pause_all_but(self, alone: Worker, attempts: int = 50) -> list[Worker]:
        """SIGSTOP every other worker at a moment when none of them holds the write lock.

        SQLite has one writer: a process frozen inside its write transaction holds up every
        other writer of the file until it wakes. A check that one consumer folds on its own
        must not freeze the others there.
        """
        others = [w for w in self.workers if w is not alone]
        for _ in range(attempts):
            for w in others:
                w.pause()
            if self.write_lock_free():
                return others
            for w in others:
                w.resume()
            await wait_for(self.write_lock_free, 10, "the write lock released")
        raise AssertionError(f"never caught the other workers outside a write transaction "
                             f"in {attempts} attempts")

    def kill_redis(self) -> None:
        self.server.kill()
        self.faults += 1

    async def restart_redis(self, timeout: float = 30.0) -> float:
        """Start the server again on the same port and dir; when it answered (monotonic).

        The rig's own client is replaced: its pooled connections died with the server.
        """
        await asyncio.to_thread(self.server.start, timeout)
        answered = time.monotonic()
        old, self.redis = self.redis, client(self.server.url, timeout=5.0)
        with contextlib.suppress(Exception):
            await old.aclose()
        return answered

    async def close(self) -> None:
        for w in self.workers + self.apis:
            w.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
