"""`wks bench --api`: authenticated state reads through the HTTP API.

The server is a real `wks api` child process (one process, as deployed) on a free loopback
port, reading the store the fold phase wrote; this process is the client. Two figures:
reads/s with `concurrency` requests always in flight (the throughput), and the latency of
reads paced at a fixed rate (the p99 a client sees at that load).

The client is lean on purpose, as load generators are: keep-alive HTTP/1.1 connections
written and read with asyncio streams. aiohttp's client spent more CPU per request than the
server (~250 us against ~300 us here); on two cores, with Redis on them too, the figure was
then the client's as much as the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import sys
import time
from dataclasses import replace
from typing import Any

from wks.bench import latency_summary
from wks.cli.bench_phases import Bench
from wks.http.auth import mint_token, new_secret
from wks.progress import Progress
from wks.redis import free_port


def _execution_ids(path: Any, limit: int = 2000) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute(
            "SELECT execution_id FROM executions ORDER BY random() LIMIT ?", (limit,))]
    finally:
        conn.close()


async def api_phase(
    b: Bench, seconds: float = 3.0, concurrency: int = 16, rate: float = 1000.0
) -> dict[str, Any]:
    """Reads/s and p99 with `concurrency` in flight, then p50/p99 paced at `rate` reads/s."""
    secret = new_secret()
    port = free_port()
    db = b.workdir / "state.db"
    env = {
        **os.environ,
        "WKS_REDIS_URL": b.settings.effective_redis_url(),
        "WKS_PREFIX": b.settings.prefix,
        "WKS_DB_PATH": str(db),
        "WKS_JWT_SECRET": secret,
        "WKS_HOST": "127.0.0.1",
        "WKS_PORT": str(port),
        "WKS_RATE_LIMIT": "1000000000/60s",  # the bench measures reads, not the limiter
        "WKS_LOG_LEVEL": "WARNING",
        "WKS_VAR_DIR": str(b.workdir / "var"),
    }
    ids = await asyncio.to_thread(_execution_ids, db)
    token = await mint_token(replace(b.settings, jwt_secret=secret), b.redis, "bench", "admin",
                             600.0)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli", "api", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    http = _Http(port, token, limit=concurrency * 2)
    try:
        await _until_up(http, server)
        await _saturate(http, ids, min(1.0, seconds), concurrency)  # warm-up
        reads, errors, lat, took = await _saturate(http, ids, seconds, concurrency)
        paced, paced_errors = await _paced(http, ids, seconds, rate)
    finally:
        await http.close()
        with contextlib.suppress(ProcessLookupError):
            server.terminate()
        await server.wait()
    summary = latency_summary(lat, 0)
    return {
        "reads_per_s": round(reads / took, 1),
        "p50_ms": summary["p50"],
        "p99_ms": summary["p99"],
        "concurrency": concurrency,
        "errors": errors,
        "paced": {**latency_summary(paced, rate), "errors": paced_errors},
        "server": "one `wks api` process; client: keep-alive HTTP/1.1 connections in the"
                  " bench process",
    }


class _Http:
    """GETs over a pool of keep-alive HTTP/1.1 connections to the server (the lean client),
    at most `limit` at once (as aiohttp's connector limit did): a read that finds none free
    waits for one instead of opening more."""

    def __init__(self, port: int, token: str, limit: int = 32) -> None:
        self.port = port
        self._auth = f"Authorization: Bearer {token}\r\n".encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(limit)

    async def get(self, path: str) -> int:
        """The response's status; the body is read and dropped."""
        async with self._slots:
            return await self._get(path)

    async def _get(self, path: str) -> int:
        reader, writer = await self._connection()
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"
                         % (path.encode(), self._auth))
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            at = head.index(b"\r\ncontent-length:") + 17
            await reader.readexactly(int(head[at:head.index(b"\r\n", at)]))
        except BaseException:
            writer.close()
            raise
        if b"\r\nconnection: close" in head:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return int(head[9:12])

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof():  # the server closes connections idle past its keep-alive
                return reader, writer
            writer.close()
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _until_up(http: _Http, server: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.returncode is not None:
            raise RuntimeError(f"`wks api` exited with {server.returncode} during the bench")
        try:
            await http.get("/health")
            return
        except (OSError, asyncio.IncompleteReadError):
            if time.monotonic() > deadline:
                raise RuntimeError("`wks api` did not answer /health in time") from None
        await asyncio.sleep(0.05)  # the child is starting: nothing to await but time


async def _read(http: _Http, xid: str) -> bool:
    return await http.get(f"/api/workflow-state/{xid}") == 200


async def _saturate(
    http: _Http, ids: list[str], seconds: float, concurrency: int
) -> tuple[int, int, list[float], float]:
    latencies: list[float] = []
    errors = [0]
    progress = Progress(None, "api reads")
    started = time.perf_counter()
    deadline = started + seconds
    rng = random.Random(5)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            ok = await _read(http, rng.choice(ids))
            latencies.append(time.perf_counter() - t)
            if not ok:
                errors[0] += 1
            progress.update()

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    progress.close()
    return len(latencies), errors[0], latencies, time.perf_counter() - started


async def _paced(
    http: _Http, ids: list[str], seconds: float, rate: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = [0]
    rng = random.Random(6)
    total = int(rate * seconds)
    progress = Progress(total, f"api @ {rate:,.0f}/s")

    async def one(xid: str, due: float) -> None:
        ok = await _read(http, xid)
        # from when the read was due, not when it went out: a late sender counts too
        latencies.append(time.perf_counter() - due)
        if not ok:
            errors[0] += 1
        progress.update()

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: the schedule is the point
            tg.create_task(one(rng.choice(ids), due))
    progress.close()
    return latencies, errors[0]
