"""`wks replay`: rebuilding state from the stream, verifying it, state as of a time."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from tests.audit.conftest import Cli, add, fold
from tests.workload import workload
from wks.config import Settings
from wks.events import encode
from wks.keys import EVENT_FIELD


async def publish_workload(r: aioredis.Redis, settings: Settings, n: int = 300) -> None:
    events = workload(n, 30, random.Random(7))
    async with r.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(settings.keys.workflow_stream, {EVENT_FIELD: encode(event)})
        await pipe.execute()


def sql(settings: Settings, statement: str, *params: object) -> None:
    with sqlite3.connect(settings.db_path) as conn:
        conn.execute(statement, params)


async def test_verify_reports_every_execution_equal_on_a_consistent_system(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """After the consumer folded the stream, replay finds the same state for every row."""
    await publish_workload(r, settings)
    await add(r, settings, {"type": "nope"})  # a bad entry: skipped by both folds
    await fold(settings, r)
    code, out, _ = await wks("replay", "--verify")
    assert code == 0, out
    assert "30 compared, 30 equal, 0 different" in out
    assert "verify over whole stream" in out
    assert "1 bad" in out


async def test_verify_names_rows_changed_behind_the_systems_back(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """Columns edited with sqlite3, or a swapped fold blob, are named with the field."""
    await publish_workload(r, settings)
    await fold(settings, r)
    sql(settings, "UPDATE executions SET status = 'failed' WHERE execution_id = 'exec-00003'"
        " AND status != 'failed'")
    sql(settings, "UPDATE executions SET progress = progress + 1 WHERE execution_id = ?",
        "exec-00011")
    sql(settings, "UPDATE executions SET data = '{\"forged\":1}' WHERE execution_id = ?",
        "exec-00017")
    sql(settings, "UPDATE executions SET fold = (SELECT fold FROM executions"
        " WHERE execution_id = 'exec-00001') WHERE execution_id = 'exec-00022'")
    code, out, _ = await wks("replay", "--verify")
    assert code == 1
    assert "4 different" in out
    assert "different  exec-00003\n    status (columns): live 'failed'" in out
    assert "different  exec-00011\n    progress (columns)" in out
    assert "different  exec-00017\n    data (columns): live {'forged': 1}" in out
    assert "executionId (fold): live 'exec-00001', replayed 'exec-00022'" in out
    assert "DIFFERENCES FOUND" in out

    code, out, _ = await wks("replay", "--verify", "--json", "--execution", "exec-00011")
    report = json.loads(out)
    assert code == 1
    assert report["summary"]["compared"] == 1
    assert report["summary"]["different"] == 1
    assert report["differences"][0]["fields"][0]["field"] == "progress"


async def test_verify_reports_rows_missing_on_either_side(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """A deleted row is missing live; a row whose logged events left the stream is named."""
    await publish_workload(r, settings)
    await fold(settings, r)
    sql(settings, "DELETE FROM executions WHERE execution_id = 'exec-00005'")
    ids = [m.decode() for m, f in await r.xrange(settings.keys.workflow_stream)
           if b'"exec-00009"' in f[EVENT_FIELD]]
    await r.xdel(settings.keys.workflow_stream, *ids)
    code, out, _ = await wks("replay", "--verify")
    assert code == 1
    assert "missing-live  exec-00005" in out
    assert "missing-stream  exec-00009" in out
    assert "1 missing live, 1 missing from the stream" in out


@pytest.mark.both_redis
async def test_partial_range_or_trimmed_stream_is_not_reported_missing(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """Rows the range never touched are not missing; partly seen ones must only contain it."""
    x = settings.keys.workflow_stream
    await add(r, settings, {"type": "workflow.started", "executionId": "a", "workflowId": "w",
                            "totalSteps": 4, "ts": 1000}, "1000-0")
    await add(r, settings, {"type": "workflow.started", "executionId": "b", "workflowId": "w",
                            "totalSteps": 4, "ts": 1000}, "1000-1")
    await add(r, settings, {"type": "workflow.progress", "executionId": "b",
                            "completedSteps": 2, "ts": 2000}, "2000-0")
    await add(r, settings, {"type": "workflow.started", "executionId": "c", "workflowId": "w",
                            "totalSteps": 4, "ts": 3000}, "3000-0")
    await fold(settings, r)
    code, out, _ = await wks("replay", "--verify", "--from", "2000")
    assert code == 0, out
    assert "1 equal" in out
    assert "1 partial-consistent" in out
    assert "1 outside the range" in out

    await r.xtrim(x, minid="2000-0", approximate=False)
    code, out, _ = await wks("replay", "--verify")
    assert code == 0, out
    assert "1 partial-consistent" in out

    # a partly seen row whose columns were edited is still caught
    sql(settings, "UPDATE executions SET completed_steps = 3 WHERE execution_id = 'b'")
    code, out, _ = await wks("replay", "--verify")
    assert code == 1
    assert "completedSteps (columns): live 3, replayed 2" in out


async def test_to_time_gives_the_state_as_of_that_time(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """`--to TIME` folds only entries that arrived up to then."""
    t0 = 1_763_000_000_000
    await add(r, settings, {"type": "workflow.started", "executionId": "x", "workflowId": "w",
                            "totalSteps": 3, "ts": t0}, f"{t0}-0")
    for step in (1, 2):
        await add(r, settings, {"type": "workflow.progress", "executionId": "x",
                                "completedSteps": step, "currentStep": f"s{step}",
                                "ts": t0 + step * 60_000}, f"{t0 + step * 60_000}-0")
    await add(r, settings, {"type": "workflow.started", "executionId": "y", "workflowId": "w",
                            "totalSteps": 1, "ts": t0}, f"{t0 + 200_000}-0")
    iso = datetime.fromtimestamp((t0 + 90_000) / 1000, UTC).isoformat()
    code, out, err = await wks("replay", "--to", iso, "--execution", "x")
    assert code == 0, err
    state = json.loads(out)
    assert (state["completedSteps"], state["currentStep"], state["progress"]) == (1, "s1", 33)

    code, out, _ = await wks("replay")
    assert code == 0
    states = [json.loads(line) for line in out.splitlines()]
    assert [s["executionId"] for s in states] == ["x", "y"]
    assert states[0]["completedSteps"] == 2

    code, _, err = await wks("replay", "--to", "yesterday")
    assert code == 1
    assert "not an entry id" in err

    # --verify up to a time: the bound ends at sequence 2^64-1, past SQLite's integers
    await fold(settings, r)
    code, out, err = await wks("replay", "--to", iso, "--verify")
    assert code == 0, err
    assert "partial" in out


async def test_out_keeps_the_replayed_store(
    r: aioredis.Redis, settings: Settings, wks: Cli
) -> None:
    """`--out FILE` keeps the scratch store: a SQLite file with the executions table."""
    await publish_workload(r, settings, 60)
    out_file = settings.db_path.parent / "replayed.db"
    code, _, err = await wks("replay", "--out", str(out_file))
    assert code == 0, err
    with sqlite3.connect(out_file) as conn:
        assert conn.execute("SELECT COUNT(*) FROM executions").fetchone()[0] == 30
    code, _, err = await wks("replay", "--out", str(out_file))
    assert code == 1
    assert "file exists" in err
    assert not list(settings.db_path.parent.glob(".wks-replay-*"))  # temp stores removed


_POISONED = "exec-00005"


def poison_one_execution(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every batch that touches `_POISONED` fail in the apply, as a poison entry does."""
    from wks import store as store_module

    real = store_module.state_row

    def poison(state, fold):  # type: ignore[no-untyped-def]
        if state.execution_id == _POISONED:
            raise OverflowError("cannot store this one")
        return real(state, fold)

    monkeypatch.setattr(store_module, "state_row", poison)


async def test_an_entry_whose_apply_fails_is_skipped_not_fatal(
    r: aioredis.Redis, settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry the fold cannot apply (here: any event of one execution) is skipped and
    counted as bad, as a consumer dead-letters it; the rest of its page is folded."""
    from wks.replay import fold_range
    from wks.store import Store

    await publish_workload(r, settings)
    events = workload(300, 30, random.Random(7))
    poisoned = sum(e.execution_id == _POISONED for e in events)
    poison_one_execution(monkeypatch)
    async with await Store.open(tmp_path / "replayed.db") as store:
        stats = await fold_range(r, settings.keys.workflow_stream, store, page=64)
        rows = await store.fetchall("SELECT execution_id FROM executions")
    assert poisoned > 0
    assert (stats.entries, stats.bad, stats.applied) == (
        len(events), poisoned, len(events) - poisoned)
    assert {row[0] for row in rows} == {e.execution_id for e in events} - {_POISONED}


async def test_wks_replay_skips_an_entry_whose_apply_fails(
    r: aioredis.Redis, settings: Settings, wks: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wks replay` folds as the restore's catch-up does (`fold_range`): an entry whose
    apply fails alone is skipped and counted bad, the replay goes on, and `--execution`
    folds that execution's events only."""
    await publish_workload(r, settings)
    events = workload(300, 30, random.Random(7))
    poison_one_execution(monkeypatch)
    poisoned = sum(e.execution_id == _POISONED for e in events)
    code, out, err = await wks("replay", "--page", "64")
    assert code == 0, err
    assert f"replay: {len(events)} entries (" in err
    assert f", {len(events) - poisoned} folded, {poisoned} bad, " in err
    ids = {json.loads(line)["executionId"] for line in out.splitlines()}
    assert ids == {e.execution_id for e in events} - {_POISONED}

    code, out, err = await wks("replay", "--page", "64", "--execution", "exec-00011")
    assert code == 0, err
    mine = sum(e.execution_id == "exec-00011" for e in events)
    assert f"replay: {len(events)} entries (" in err
    assert f", {mine} folded, 0 bad, 1 executions, " in err
    assert [json.loads(line)["executionId"] for line in out.splitlines()] == ["exec-00011"]


_LOGGED = ("SELECT entry_id, entry_ms, entry_seq, event_id, event_key, execution_id, type, ts,"
           " payload FROM event_log ORDER BY entry_ms, entry_seq")


async def test_pages_built_ahead_log_every_entry_as_the_consumer_does(
    r: aioredis.Redis, settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page's event_log rows are built while the page before it folds (a slice at a
    time past DECODE_SLICE) and handed to the apply: pages past INLINE_MAX (their rows as
    records, on SQLite's thread) and a last one within it (row by row) log exactly what the
    consumer logged; with an execution filter, only that execution's rows."""
    from wks import batch_rows
    from wks.events import DECODE_SLICE
    from wks.replay import fold_range
    from wks.store import Store

    await publish_workload(r, settings, n=2350)
    total = len(workload(2350, 30, random.Random(7)))  # what publish_workload sent
    await add(r, settings, {"type": "nope"})  # a bad entry: skipped, its page still built
    await fold(settings, r)
    handed: list[tuple[int, bool]] = []
    real = Store.apply_batch

    async def spy(self, entries, before_commit=None, logs=None):  # type: ignore[no-untyped-def]
        handed.append((len(entries), logs is not None and logs.entries is entries))
        return await real(self, entries, before_commit, logs)

    monkeypatch.setattr(Store, "apply_batch", spy)
    stream = settings.keys.workflow_stream
    async with await Store.open(tmp_path / "replayed.db") as store:
        stats = await fold_range(r, stream, store, page=DECODE_SLICE + 200)
    assert (stats.entries, stats.applied, stats.bad) == (total + 1, total, 1)
    sizes = [n for n, _ in handed]
    assert sum(sizes) == total
    assert min(sizes[:-1]) > DECODE_SLICE > batch_rows.INLINE_MAX >= sizes[-1] > 0
    assert all(ok for _, ok in handed)
    with sqlite3.connect(settings.db_path) as a, sqlite3.connect(tmp_path / "replayed.db") as b:
        assert b.execute(_LOGGED).fetchall() == a.execute(_LOGGED).fetchall()
        assert len(a.execute(_LOGGED).fetchall()) == total

    handed.clear()
    async with await Store.open(tmp_path / "one.db") as store:
        stats = await fold_range(r, stream, store, page=DECODE_SLICE + 200,
                                 execution="exec-00011")
    mine = sum(e.execution_id == "exec-00011" for e in workload(2350, 30, random.Random(7)))
    assert (stats.entries, stats.applied, stats.bad) == (total + 1, mine, 1)
    assert sum(n for n, _ in handed) == mine
    assert all(ok for _, ok in handed)
    only = _LOGGED.replace("ORDER BY", "WHERE execution_id = 'exec-00011' ORDER BY")
    with sqlite3.connect(settings.db_path) as a, sqlite3.connect(tmp_path / "one.db") as b:
        assert b.execute(_LOGGED).fetchall() == a.execute(only).fetchall()
        assert len(b.execute(_LOGGED).fetchall()) == mine


async def test_replay_into_reports_pages_ids_and_counts(
    r: aioredis.Redis, settings: Settings, tmp_path
) -> None:
    """What `wks replay` prints and shows as progress: each page's number of entries, the
    first and last entry ids, folded and bad (with `--execution`, the other executions'
    entries are neither)."""
    from wks.audit import replay_into
    from wks.store import Store

    stream = settings.keys.workflow_stream
    await publish_workload(r, settings, n=500)
    await add(r, settings, {"type": "nope"})
    total = len(workload(500, 30, random.Random(7))) + 1
    first = (await r.xrange(stream, count=1))[0][0].decode()
    last = (await r.xrevrange(stream, count=1))[0][0].decode()
    for execution, applied in ((None, total - 1), ("exec-00011", sum(
            e.execution_id == "exec-00011" for e in workload(500, 30, random.Random(7))))):
        pages: list[int] = []
        async with await Store.open(tmp_path / f"{execution}.db") as store:
            stats = await replay_into(r, stream, store, page=100, execution=execution,
                                      on_page=pages.append)
        assert pages == [100] * (total // 100) + [total % 100]
        assert (stats.entries, stats.applied, stats.bad) == (total, applied, 1)
        assert (stats.first_entry_id, stats.last_entry_id) == (first, last)
        assert stats.seconds > 0


async def test_rows_not_built_ahead_are_built_as_the_page_is_applied(
    r: aioredis.Redis, settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a page's rows ahead failing (a bug) costs only the head start: the page is
    applied whole, its rows built by the apply, and the failure logged."""
    from loguru import logger

    from wks import replay
    from wks.store import Store

    async def broken(entries):  # type: ignore[no-untyped-def]
        raise RuntimeError("no rows today")

    monkeypatch.setattr(replay, "log_rows_sliced", broken)
    total = len(workload(400, 30, random.Random(7)))
    assert 350 < total <= 700
    await publish_workload(r, settings, n=400)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        async with await Store.open(tmp_path / "replayed.db") as store:
            stats = await replay.fold_range(r, settings.keys.workflow_stream, store, page=350)
            logged = await store.scalar("SELECT COUNT(*) FROM event_log")
    finally:
        logger.remove(sink)
    assert (stats.applied, stats.bad, logged) == (total, 0, total)
    assert sum("no rows today" in w for w in warnings) == 2  # once per page


async def test_bounds_the_wrong_way_round_are_an_error(wks: Cli) -> None:
    """--from after --to is a mistake to say, not an empty replay that exits 0."""
    code, _, err = await wks("replay", "--from", "2026-11-22T15:00Z", "--to", "2026-11-22T14:00Z")
    assert code == 1
    assert "--from 2026-11-22T15:00Z is after --to 2026-11-22T14:00Z" in err
    code, _, err = await wks("replay", "--from", "1960-01-01T00:00Z")
    assert code == 1
    assert "a time before 1970 is before every entry" in err


async def test_sigterm_removes_the_scratch_file(r: aioredis.Redis, settings: Settings) -> None:
    """A replay stopped by SIGTERM (a timeout, a supervisor) removes its scratch directory
    beside the database, as at its end; it exits as after Ctrl-C."""
    import asyncio
    import os
    import signal
    import sys

    from tests.backup.conftest import env_for

    events = workload(60_000, 6_000, random.Random(3))
    for at in range(0, len(events), 5_000):
        async with r.pipeline(transaction=False) as pipe:
            for event in events[at:at + 5_000]:
                pipe.xadd(settings.keys.workflow_stream, {EVENT_FIELD: encode(event)})
            await pipe.execute()
    near = settings.db_path.parent
    near.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli", "replay", "--page", "500", "--progress",
        env=env_for(settings), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    await proc.stderr.readuntil(b"replay")  # the progress line: the scratch file is open
    assert list(near.glob(".wks-replay-*"))
    os.kill(proc.pid, signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 130
    assert not list(near.glob(".wks-replay-*"))
