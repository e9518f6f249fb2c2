"""Restore: round trip with stream catch-up from the safe point, and crashes mid-restore."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from consumers.reader import GroupReader
from consumers.state import StateHandler
from tests.backup.conftest import ROOT, WKS, env_for
from tests.helpers import wait_for
from wks import backup_job, catch_up
from wks import backup_log as log
from wks.cli.runtime import Runtime
from wks.cli.services import state_service
from wks.config import Settings
from wks.errors import BackupError
from wks.events import WorkflowCompleted, WorkflowProgress, WorkflowStarted, encode
from wks.http import health
from wks.keys import EVENT_FIELD, GROUP_STATE
from wks.liveness import running_consumers
from wks.restore import restore
from wks.state import state_dict, to_state
from wks.store import Store


async def _emit(r: aioredis.Redis, settings: Settings, events: list[Any]) -> list[str]:
    ids = []
    for ev in events:
        mid = await r.xadd(settings.keys.workflow_stream, {EVENT_FIELD: encode(ev)})
        ids.append(mid.decode())
    return ids


def _wave(first: int, count: int, ts: int) -> list[Any]:
    out: list[Any] = []
    for i in range(first, first + count):
        out.append(WorkflowStarted(ts=ts, execution_id=f"x{i}", workflow_id="wf",
                                   total_steps=4, data={"wave": ts}))
        out.append(WorkflowProgress(ts=ts + 1, execution_id=f"x{i % 7}", completed_steps=i % 5,
                                    current_step=f"s{i}", data={"last": i}))
    out.append(WorkflowCompleted(ts=ts + 2, execution_id=f"x{first}"))
    return out


async def _fold(r: aioredis.Redis, settings: Settings) -> None:
    """Run the state group until the stream is drained (claiming stalled entries too)."""
    store = await Store.open(settings.db_path)
    try:
        reader = GroupReader(r, settings.keys, name="workflow",
                             stream=settings.keys.workflow_stream, group=GROUP_STATE,
                             handler=StateHandler(store, r, settings.keys, settings.state_ttl),
                             claim_idle=0.2, burst=True)
        await reader.run(asyncio.Event())
    finally:
        await store.close()


async def _states(db: Path) -> dict[str, Any]:
    store = await Store.open(db)
    try:
        return {f.execution_id: state_dict(to_state(f)) async for f in store.iter_folds()}
    finally:
        await store.close()


async def _prepare(r: aioredis.Redis, settings: Settings) -> tuple[int, str, dict[str, Any]]:
    """A backup taken while entries were pending and undelivered; then more traffic."""
    await r.xgroup_create(settings.keys.workflow_stream, GROUP_STATE, id="0", mkstream=True)
    await _emit(r, settings, _wave(0, 30, 1_000))
    await _fold(r, settings)
    late = await _emit(r, settings, _wave(30, 20, 2_000))  # published before the backup...
    # ...and partly delivered to a consumer that died before acknowledging them
    await r.xreadgroup(GROUP_STATE, "ghost", {settings.keys.workflow_stream: ">"}, count=5)
    store = await Store.open(settings.db_path)
    try:
        row = await backup_job.locked_backup(store, r, settings)
    finally:
        await store.close()
    await _emit(r, settings, _wave(50, 20, 3_000))
    await _fold(r, settings)
    return int(row["id"]), late[0], await _states(settings.db_path)


async def _disaster(db: Path) -> None:
    store = await Store.open(db)
    try:
        await store.conn.execute("DELETE FROM executions")
        await store.conn.execute("DELETE FROM event_log")
    finally:
        await store.close()


async def test_restore_round_trip_equals_the_state_before_the_disaster(
    r: aioredis.Redis, settings: Settings
):
    """After a disaster, restore + catch-up from the backup's safe point gives back exactly
    the state before it, including events published before the backup but not yet applied."""
    backup_id, first_late, before = await _prepare(r, settings)
    assert len(before) == 70
    await _disaster(settings.db_path)
    assert await _states(settings.db_path) == {}
    result = await restore(settings, r, backup_id)
    assert result is not None
    assert result.safety_backup_id is not None
    assert tuple(map(int, result.replay_from.split("-"))) <= \
        tuple(map(int, first_late.split("-")))  # from the safe point, not the backup's time
    assert await _states(settings.db_path) == before
    store = await Store.open(settings.db_path)
    try:  # the log still knows every backup, including the safety one
        assert await catch_up.pending(store) is None
        rows = await store.fetchall("SELECT id, backup_type FROM backup_log ORDER BY id")
    finally:
        await store.close()
    assert [tuple(row) for row in rows] == [(backup_id, "manual"),
                                            (result.safety_backup_id, "pre-migration")]


async def test_restore_says_when_the_stream_no_longer_reaches_the_backup(
    r: aioredis.Redis, settings: Settings
):
    """SPEC 7 restores state for every event still in the stream. When the stream lacks
    events after the backup (a Redis that came up empty, also once a worker has recreated
    the group there and read new events; a stream trimmed past the safe point), the restore
    goes ahead and says so; with the whole stream there, it says nothing."""
    backup_id, first_late, before = await _prepare(r, settings)
    stream = settings.keys.workflow_stream
    kept = await r.xrange(stream)
    await r.delete(stream)  # as a Redis that came up empty
    result = await restore(settings, r, backup_id)
    assert result is not None
    assert result.gap is not None
    assert result.gap.startswith("the workflow stream is empty or missing")
    assert len(await _states(settings.db_path)) == 30  # the backup's; the 40 after it are lost
    # a worker started there recreates its group and reads what is published since
    await r.xgroup_create(stream, GROUP_STATE, id="0", mkstream=True)
    await _emit(r, settings, _wave(70, 1, 4_000))
    await r.xreadgroup(GROUP_STATE, "new", {stream: ">"})
    result = await restore(settings, r, backup_id)
    assert result is not None
    assert result.gap is not None
    assert "is past the backup's safe point" in result.gap
    # the right stream, but trimmed by age past the safe point
    await r.delete(stream)
    for entry_id, fields in kept:
        await r.xadd(stream, fields, id=entry_id)
    ms, seq = first_late.split("-")  # the first entry not folded at the backup: its safe point
    await r.xtrim(stream, minid=f"{ms}-{int(seq) + 1}", approximate=False)
    result = await restore(settings, r, backup_id)
    assert result is not None
    assert result.gap is not None
    assert "trimmed by age, or this Redis lost them" in result.gap
    assert await _states(settings.db_path) != before  # the trimmed event is lost
    # the whole stream: nothing to say
    await r.delete(stream)
    for entry_id, fields in kept:
        await r.xadd(stream, fields, id=entry_id)
    result = await restore(settings, r, backup_id)
    assert result is not None
    assert result.gap is None
    assert await _states(settings.db_path) == before


async def test_wks_restore_warns_in_one_line_on_stderr(r: aioredis.Redis, settings: Settings):
    """The command line: a restore against a stream that lacks events after the backup exits
    0 and ends with one warning line on stderr; with the whole stream there, none."""
    backup_id, _late, before = await _prepare(r, settings)
    stream = settings.keys.workflow_stream
    kept = await r.xrange(stream)
    await r.delete(stream)

    async def wks_restore() -> tuple[int, str, list[str]]:
        proc = await asyncio.create_subprocess_exec(
            *WKS, "restore", str(backup_id), "--yes", env=env_for(settings), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        warnings = [line for line in err.decode().splitlines()
                    if line.startswith("wks restore: warning:")]
        return proc.returncode or 0, out.decode(), warnings

    code, out, warnings = await wks_restore()
    assert code == 0
    assert out.startswith(f"restored backup {backup_id} (safety backup ")
    assert len(warnings) == 1
    assert "the workflow stream is empty or missing" in warnings[0]
    assert warnings[0].endswith("(undo with the safety backup)")
    for entry_id, fields in kept:
        await r.xadd(stream, fields, id=entry_id)
    code, _out, warnings = await wks_restore()
    assert (code, warnings) == (0, [])
    assert await _states(settings.db_path) == before


async def test_restore_refuses_while_a_state_consumer_runs(
    r: aioredis.Redis, settings: Settings
):
    """Restore is offline. A state reader waiting on a quiet stream (nothing delivered to it
    for long: XINFO's idle would call it gone before Redis 7.2) makes it refuse and leave the
    database alone; once the reader has stopped, the same restore runs."""
    backup_id, _late, before = await _prepare(r, settings)
    stop = asyncio.Event()
    store = await Store.open(settings.db_path)
    try:
        reader = GroupReader(r, settings.keys, name="workflow", consumer="still-running",
                             stream=settings.keys.workflow_stream, group=GROUP_STATE,
                             handler=StateHandler(store, r, settings.keys, settings.state_ttl))
        task = asyncio.create_task(reader.run(stop))
        await wait_for(lambda: running_consumers(r, settings.keys, GROUP_STATE), 10,
                       "the reader's heartbeat")
        with pytest.raises(BackupError, match=r"state consumers are running.*still-running"):
            await restore(settings, r, backup_id)
        assert await _states(settings.db_path) == before
    finally:
        stop.set()
        await task
        await store.close()
    assert await restore(settings, r, backup_id) is not None
    assert await _states(settings.db_path) == before


async def test_a_restore_killed_during_its_catch_up_is_finished_before_folding_resumes(
    r: aioredis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The catch-up folds entries the group acknowledged long ago, so a restore that dies
    during it must not leave the swapped-in copy silently behind: the copy says so (/health
    reports it), and the state service finishes it before it reads the group."""
    backup_id, _late, before = await _prepare(r, settings)
    await _disaster(settings.db_path)

    async def killed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed during the catch-up")

    monkeypatch.setattr(catch_up, "fold_range", killed)
    with pytest.raises(RuntimeError, match="killed"):
        await restore(settings, r, backup_id)
    monkeypatch.undo()
    assert await _states(settings.db_path) != before  # the backup alone is behind
    async with await Store.open(settings.db_path) as store:
        start = await catch_up.pending(store)
        assert start is not None
        db = await health.database(store)
        assert (db["status"], db["restoreCatchUpFrom"]) == ("degraded", start)
        # a worker stopped during the catch-up (here after its one page) leaves the record
        # for the next start
        stopped = asyncio.Event()
        stopped.set()
        cut = await catch_up.finish(r, settings.keys, store, stop=stopped)
        assert cut is not None
        assert cut.stopped
        assert await catch_up.pending(store) == start
        # a backup of the unfinished database must replay from where its catch-up starts
        behind = await backup_job.locked_backup(store, r, settings)
        assert catch_up.earlier(behind["replay_from"], start) == behind["replay_from"]

    rt = Runtime(settings, r, settings.redis_url or "", "external")
    await state_service(rt, burst=True)(asyncio.Event())
    assert await _states(settings.db_path) == before
    async with await Store.open(settings.db_path) as store:
        assert await catch_up.pending(store) is None
        assert (await health.database(store))["status"] == "healthy"

    await _disaster(settings.db_path)  # and restoring that backup gives the whole state
    assert await restore(settings, r, int(behind["id"])) is not None
    assert await _states(settings.db_path) == before


def _sound(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT count(*) FROM executions").fetchone()[0])
    finally:
        conn.close()


async def test_a_crash_during_restore_leaves_a_sound_database(
    r: aioredis.Redis, settings: Settings
):
    """`wks restore` SIGKILLed at seeded random moments leaves a database that opens and
    passes integrity_check (the old one or the new one), and a rerun completes the restore."""
    backup_id, _late, before = await _prepare(r, settings)
    await _disaster(settings.db_path)
    rng = random.Random(7)
    # a restore killed while its safety backup holds lock `backup` leaves it to its TTL: the
    # next one waits that long (and says so), so the TTL is short here
    env = env_for(settings, WKS_LOCK_TTL="3s")
    for _run in range(3):
        proc = await asyncio.create_subprocess_exec(
            *WKS, "restore", str(backup_id), "--yes", env=env, cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(rng.uniform(0.3, 1.5))  # the fault: a random moment
        with contextlib.suppress(ProcessLookupError):  # it may have finished meanwhile
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        count = await asyncio.to_thread(_sound, settings.db_path)
        # the old (emptied) database, or the restored one, perhaps part way through catch-up
        assert count == 0 or 30 <= count <= len(before), count
    proc = await asyncio.create_subprocess_exec(*WKS, "restore", str(backup_id), "--yes",
                                                env=env, cwd=ROOT)
    assert await proc.wait() == 0
    assert await _states(settings.db_path) == before


async def test_restore_by_file_name_when_the_database_is_gone(
    r: aioredis.Redis, settings: Settings
):
    """With the database (and so its backup log) deleted, restoring the backup file by name
    catches up from the safe point the snapshot recorded about itself."""
    backup_id, first_late, before = await _prepare(r, settings)
    store = await Store.open(settings.db_path)
    try:
        row = await backup_job.verify_backup(store, settings, backup_id)
        name = Path((await store.fetchall("SELECT file_path FROM backup_log WHERE id = ?",
                                          (backup_id,)))[0][0]).name
        newer = Path((await backup_job.locked_backup(store, r, settings))["file_path"]).name
    finally:
        await store.close()
    assert row.valid
    for suffix in ("", "-wal", "-shm"):
        await asyncio.to_thread(Path(f"{settings.db_path}{suffix}").unlink, missing_ok=True)
    result = await restore(settings, r, None, file_name=name)
    assert result is not None
    assert result.safety_backup_id is None  # nothing was left to protect
    assert tuple(map(int, result.replay_from.split("-"))) <= \
        tuple(map(int, first_late.split("-")))
    assert await _states(settings.db_path) == before
    store = await Store.open(settings.db_path)
    try:  # the newer backup file, unknown to the restored log, is recorded and kept
        await backup_job.locked_backup(store, r, settings)
        kept = {Path(row["file_path"]).name for row in await log.completed(store)}
    finally:
        await store.close()
    assert {name, newer} <= kept
    assert (settings.backup_dir / newer).exists()


async def test_declining_at_the_prompt_changes_nothing_and_prints_no_progress(
    r: aioredis.Redis, settings: Settings
) -> None:
    """On a terminal, `wks restore ID` asks; "n" leaves the database and says so in one
    line, without a progress line for a replay that never ran."""
    import pty

    backup_id, _, before = await _prepare(r, settings)
    main, child = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *WKS, "restore", str(backup_id), stdin=child, stdout=child, stderr=child,
        env=env_for(settings), cwd=ROOT)
    os.close(child)
    seen = b""
    while b"[y/N]" not in seen:
        seen += await asyncio.to_thread(os.read, main, 4096)
    os.write(main, b"n\n")
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    with contextlib.suppress(OSError):  # the pty's other end closed with the process
        while chunk := await asyncio.to_thread(os.read, main, 4096):
            seen += chunk
    os.close(main)
    lines = [line for line in seen.decode().splitlines() if line.strip()]
    assert lines[-1] == "wks restore: cancelled; nothing changed"
    assert not any(line.startswith("replay") for line in lines), lines
    assert await _states(settings.db_path) == before


async def test_a_restore_after_wks_up_stopped_replays_from_its_redis_data(
    settings: Settings, tmp_path: Path
) -> None:
    """The quick start's layout: `wks up` managed a Redis keeping its streams under
    var/redis, and stopping `wks up` stopped it (and removed var/redis.url). With no URL
    configured, `wks restore` starts that server again from its data for the replay,
    instead of reaching for a server on 6379 that never held the stream."""
    import dataclasses

    from wks.managed import Managed, start_managed
    from wks.redis import client

    var = tmp_path / "quick" / "var"
    server = await asyncio.to_thread(start_managed, var)
    assert isinstance(server, Managed)
    local = dataclasses.replace(settings, redis_url=server.url, var_dir=var,
                                db_path=var / "workstation.db", backup_dir=var / "backups")
    r = client(server.url)
    try:
        backup_id, _, before = await _prepare(r, local)
    finally:
        await r.aclose()
        await asyncio.to_thread(server.stop)
    assert not local.redis_url_file.exists()
    await _disaster(local.db_path)

    env = env_for(local)
    del env["WKS_REDIS_URL"]
    proc = await asyncio.create_subprocess_exec(
        *WKS, "restore", str(backup_id), "--yes", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "replayed" in out.decode()
    assert await _states(local.db_path) == before
    assert not local.redis_url_file.exists()  # the server it started is stopped again
