"""A full disk under the SQLite file (scenario 7): nothing is acknowledged without its
commit, the error is clear in the logs and /health, and folding resumes when space returns.

Two real ways to run out of space: a tmpfs mounted for the test (needs root, or
CAP_SYS_ADMIN; 128 MiB so that /health's 100 MiB free-space threshold is seen both ways),
and, anywhere on Linux, RLIMIT_FSIZE set on the running consumer with prlimit(2), which makes
the kernel refuse its writes past a size (EFBIG) until the limit is lifted again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.client import Producer
from tests.faults.harness import Rig, Worker, health
from tests.faults.reference import Ledger, check, db_connect, feed
from tests.faults.reference import workload as make_workload
from tests.helpers import wait_for
from wks.events import WorkflowProgress
from wks.keys import GROUP_STATE
from wks.redis import client

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "128m") -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no block left."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 512):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def applied_entries(rig: Rig) -> set[str]:
    with db_connect(rig.db_path) as conn:
        rows = conn.execute("SELECT entry_id FROM event_log UNION SELECT entry_id FROM event_alias")
        return {r[0] for r in rows}


async def acked_without_commit(rig: Rig) -> set[str]:
    """Entries the group acknowledged (delivered, no longer pending) that SQLite lacks."""
    stream = rig.keys.workflow_stream
    groups = {g["name"].decode(): g for g in await rig.redis.xinfo_groups(stream)}
    last = groups[GROUP_STATE]["last-delivered-id"].decode()
    delivered = {i.decode() for i, _ in await rig.redis.xrange(stream, max=last)}
    pending = {p["message_id"].decode() for p in await rig.redis.xpending_range(
        stream, GROUP_STATE, "-", "+", 100_000)}
    return delivered - pending - applied_entries(rig)


def heavy_events(events: list[WorkflowProgress], seed: int) -> list[WorkflowProgress]:
    """400 events of ~8 KB each: several MB, far more than the space left."""
    blob = "x" * 8000
    return [WorkflowProgress(execution_id=e.execution_id, completed_steps=1,
                             data={"blob": blob, "n": i}, ts=e.ts + 1,
                             event_id=f"d{seed}-heavy-{i}")
            for i, e in enumerate(events * 10) if i < 400]


async def squeeze_and_recover(rig: Rig, seed: int, squeeze, release, cause: tuple[str, ...],
                              base: str | None = None) -> None:
    """Fold, take the space away, publish, check nothing is acknowledged, give it back."""
    rng = random.Random(seed)
    worker = rig.spawn()
    producer = Producer(client(rig.server.url), rig.keys, owns_client=True)
    ledger = Ledger()
    events = make_workload(rng, f"d{seed}", 40)
    await feed(ledger, producer, events, rng)
    await rig.settle()
    if base is not None:
        before = await health(base)
        assert before is not None
        assert before["checks"]["diskSpace"]["status"] == "healthy", before

    squeeze(worker)
    await feed(ledger, producer, heavy_events(events, seed), rng, batch=(20, 50))
    await wait_for(lambda: worker.logged("batch not applied"), 60,
                   f"seed={seed}: the consumer reporting the failed commit")
    errors = [r for r in worker.logs() if "batch not applied" in str(r.get("msg"))]
    assert any(c in errors[0]["msg"] for c in cause), f"seed={seed}: names the cause: {errors[0]}"
    assert worker.alive, f"seed={seed}: a full disk never crashes the consumer"
    assert await rig.pending() > 0, f"seed={seed}: the failed batch stays pending"
    assert not await acked_without_commit(rig), f"seed={seed}: acknowledged, not committed"
    if base is not None:
        full = await health(base)
        assert full is not None
        assert full["checks"]["diskSpace"]["status"] == "unhealthy", full
        assert full["httpStatus"] == 503, full

    release(worker)  # space returns
    await rig.settle(90)
    await producer.aclose()
    assert not await acked_without_commit(rig), f"seed={seed}"
    outcome = await check(ledger, rig.db_path, rig.redis, rig.keys, seed)
    print(f"disk full {outcome.summary()}")
    outcome.assert_exact()
    if base is not None:
        after = await health(base)
        assert after is not None
        assert after["checks"]["diskSpace"]["status"] == "healthy", after


async def test_disk_full_under_sqlite(make_rig, tmp_path):
    """Disk full: batches stay pending, never acknowledged; logs and /health say so; recovery."""
    with tiny_disk(tmp_path / "disk") as disk:
        rig = await make_rig(db_dir=disk)
        try:
            _api, base = await rig.spawn_api()
            fillers: list[Path] = []
            await squeeze_and_recover(
                rig, 71, lambda _w: fillers.append(fill(disk)),
                lambda _w: fillers.pop().unlink(), ("full",), base)
        finally:
            await rig.close()  # nothing may hold the mount when it goes


async def test_file_size_limit_under_sqlite(make_rig):
    """The same without root: RLIMIT_FSIZE on the consumer makes its SQLite writes fail."""
    rig = await make_rig()

    def squeeze(worker: Worker) -> None:
        files = [rig.db_path, rig.db_path.with_name(rig.db_path.name + "-wal")]
        limit = max(f.stat().st_size for f in files if f.exists()) + 64 * 1024
        resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    def release(worker: Worker) -> None:
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, unlimited)

    await squeeze_and_recover(rig, 72, squeeze, release, ("full", "I/O error", "too large"))
