"""`wks bench --second-process`: two consumer processes fold one stream into one database.

This process and a child (`python -m wks.cli.bench_fold2 URL PREFIX DB GROUP`) share a new
consumer group on the bench stream; the child opens everything, says `ready`, and starts on
`go`, so process start-up is not timed. Afterwards the result must equal the single-process
fold row for row: the merge happens inside each write transaction, so concurrent writers
cannot lose each other's events.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from wks.bench import eps
from wks.cli.bench_phases import Bench, state_reader
from wks.config import Settings
from wks.redis import client
from wks.store import Store

_COLUMNS = ("execution_id, workflow_id, status, progress, current_step, total_steps,"
            " completed_steps, data, started_at, updated_at, error, owner")


async def second_process_phase(b: Bench, n: int) -> dict[str, Any]:
    """Fold the N entries with this process and a child at once; compare with one process."""
    group = "state-2p"
    db = b.workdir / "fold2.db"
    await b.redis.xgroup_create(b.keys.workflow_stream, group, id="0")
    store = await Store.open(db)  # migrated before the child opens it
    last = [0.0]

    def applied(items: Any, at: float) -> None:
        last[0] = time.time()

    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wks.cli.bench_fold2", b.settings.effective_redis_url(),
            b.settings.prefix, str(db), group,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        if (await child.stdout.readline()).strip() != b"ready":
            raise RuntimeError("the second bench consumer did not start")
        reader = state_reader(b, store, group, applied, burst=True)
        started = time.time()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        await reader.run(asyncio.Event())
        theirs = json.loads(await child.stdout.readline())
        await child.wait()
    finally:
        await store.close()
    total = reader.status.applied + int(theirs["applied"])
    seconds = max(last[0], float(theirs["last"])) - started
    equal, rows = await asyncio.to_thread(_same_state, b.workdir / "state.db", db)
    return {
        "fold2_eps": eps(total, seconds),
        "fold2_folded": total,
        "fold2_split": [reader.status.applied, int(theirs["applied"])],
        "fold2_correct": equal and total >= n,
        "fold2_rows": rows,
    }


def _same_state(one: Path, two: Path) -> tuple[bool, int]:
    """Do both databases hold the same executions and the same logged events?"""
    conn = sqlite3.connect(one)
    try:
        conn.execute("ATTACH DATABASE ? AS two", (str(two),))
        diff = 0
        for a, b in (("main", "two"), ("two", "main")):
            diff += conn.execute(
                f"SELECT COUNT(*) FROM (SELECT {_COLUMNS} FROM {a}.executions"
                f" EXCEPT SELECT {_COLUMNS} FROM {b}.executions)").fetchone()[0]
            diff += conn.execute(
                f"SELECT COUNT(*) FROM (SELECT event_key, execution_id FROM {a}.event_log"
                f" EXCEPT SELECT event_key, execution_id FROM {b}.event_log)").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM two.executions").fetchone()[0]
        return diff == 0 and rows > 0, int(rows)
    finally:
        conn.close()


async def _child(url: str, prefix: str, db: str, group: str) -> None:
    settings = replace(Settings(), redis_url=url, prefix=prefix)
    redis = client(url, timeout=60.0)
    store = await Store.open(db)
    last = [0.0]

    def applied(items: Any, at: float) -> None:
        last[0] = time.time()

    try:
        b = Bench(settings, redis, Path(db).parent, run="child")
        reader = state_reader(b, store, group, applied, burst=True)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await reader.run(asyncio.Event())
        print(json.dumps({"applied": reader.status.applied, "last": last[0]}), flush=True)
    finally:
        await store.close()
        await redis.aclose()


if __name__ == "__main__":
    from wks import logs

    logs.setup("WARNING", "json")
    asyncio.run(_child(*sys.argv[1:5]))
