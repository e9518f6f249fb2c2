"""The batch write as one JSON-array statement (SQLite 3.38+) stores exactly what the
per-row executemany path stores, row for row, byte for byte."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from tests.workload import workload
from wks import batch_rows
from wks import events as ev
from wks import store as store_module
from wks.events import StreamEntry, encode
from wks.store import Store

pytestmark = pytest.mark.skipif(
    not batch_rows.JSON_ROWS, reason=f"SQLite {sqlite3.sqlite_version} has no ->> operator")

_AWKWARD = 'quote " backslash \\ tab \t newline \n unicode é ✓ 𝄞, a backslash-u0000 text \\u0000'
# an ignored key may hold bytes that are not UTF-8: the payload is stored with U+FFFD there
_RAW = b'{"type":"workflow.completed","executionId":"raw","ts":5,"note":"caf\xc3\xa9 \xff"}'
_NUL = "before\x00after"  # SQLite's JSON functions would cut it: that batch goes row by row


def _batches() -> list[list[StreamEntry]]:
    rnd = random.Random(11)
    events = workload(3000, 300, rnd)
    events += [
        ev.WorkflowStarted(execution_id="odd", workflow_id="wf", total_steps=2**40,
                           owner=_AWKWARD[:40], data={"k": _AWKWARD, "n": -(2**62), "f": 0.1,
                                                      "z": None, "l": [1, "2", {"3": True}]},
                           ts=1, event_id="odd-0"),
        ev.WorkflowFailed(execution_id="odd", error=_AWKWARD, ts=2, event_id="odd-1"),
        ev.WorkflowProgress(execution_id="nul", completed_steps=1, current_step=_NUL, ts=3),
        # an eventId of several UTF-8 lengths, and a NUL: the event_log records cut it by bytes
        ev.WorkflowProgress(execution_id="odd", completed_steps=1, ts=4, event_id="é✓𝄞\x00id"),
        ev.WorkflowCompleted(execution_id="big", ts=ev.INT64_MAX, event_id="big-0"),
    ]
    rnd.shuffle(events)
    entries = [StreamEntry(f"{1000 + i}-{i % 3}", e, encode(e)) for i, e in enumerate(events)]
    entries.append(StreamEntry("9500-0", ev.decode_workflow(_RAW), _RAW))
    # a resend of every 50th event (same eventId, new entry id): logged once, aliased
    entries += [StreamEntry(f"9000-{i}", e.event, e.raw)
                for i, e in enumerate(entries[::50]) if e.event.event_id is not None]
    # several batches, so later ones update rows the earlier ones inserted
    return [entries[i:i + 700] for i in range(0, len(entries), 700)]


async def _tables(
    path: Path, batches: list[list[StreamEntry]] | None = None, limit: int | None = None,
    *, commit_on_loop: bool = False,
) -> dict[str, list[tuple[object, ...]]]:
    """Every row stored by folding `batches` (default `_batches()`) into a new file; with
    `limit`, SQLite's longest value (SQLITE_LIMIT_LENGTH) is lowered to it first. Each batch
    must be committed when apply_batch returns: another connection counts its entries."""
    async with await Store.open(path) as store:
        store.commit_small_on_loop = commit_on_loop
        if limit is not None:
            store.conn._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)  # the test's lever
        seen = sqlite3.connect(path)
        applied: set[str] = set()
        try:
            for batch in _batches() if batches is None else batches:
                await store.apply_batch(batch)
                applied |= {e.entry_id for e in batch}
                (logged,) = seen.execute("SELECT COUNT(*) FROM event_log").fetchone()
                (aliased,) = seen.execute("SELECT COUNT(*) FROM event_alias").fetchone()
                assert logged + aliased == len(applied)
        finally:
            seen.close()
        return {
            "executions": [tuple(r) for r in await store.fetchall(
                "SELECT * FROM executions ORDER BY execution_id")],
            "event_log": [tuple(r) for r in await store.fetchall(
                "SELECT * FROM event_log ORDER BY seq")],
            "event_alias": [tuple(r) for r in await store.fetchall(
                "SELECT * FROM event_alias ORDER BY entry_id")],
        }


async def test_json_rows_and_executemany_store_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    multibyte = next(b for b in _batches() if any(e.event.event_id == "é✓𝄞\x00id" for e in b))
    assert batch_rows.log_rows(multibyte).records is not None  # it went as records
    monkeypatch.setattr(batch_rows, "now_ms", lambda: 1_763_900_000_000)
    by_json = await _tables(tmp_path / "json.db")
    monkeypatch.setattr(batch_rows, "JSON_ROWS", False)
    by_rows = await _tables(tmp_path / "rows.db")
    assert by_json == by_rows
    assert len(by_json["executions"]) == 304
    assert "é✓𝄞\x00id" in {r[4] for r in by_json["event_log"]}  # event_id
    assert by_json["event_alias"], "the resends made aliases"
    odd = next(r for r in by_json["executions"] if r[0] == "odd")
    assert odd[5] == 2**40  # total_steps
    assert odd[10] == _AWKWARD  # error
    assert isinstance(odd[12], bytes)  # the fold is a BLOB either way
    nul = next(r for r in by_json["executions"] if r[0] == "nul")
    assert nul[4] == _NUL  # current_step, whole
    raw = next(r for r in by_json["event_log"] if r[1] == "9500-0")
    assert raw[9] == _RAW.decode("utf-8", "replace")  # payload
    types = await _column_types(tmp_path / "json.db")
    assert types == await _column_types(tmp_path / "rows.db")


async def _column_types(path: Path) -> list[tuple[object, ...]]:
    """The storage class of every value (TEXT stays TEXT, INTEGER stays INTEGER)."""
    async with await Store.open(path) as store:
        rows = await store.fetchall(
            "SELECT typeof(workflow_id), typeof(progress), typeof(current_step),"
            " typeof(total_steps), typeof(data), typeof(error), typeof(owner), typeof(fold)"
            " FROM executions ORDER BY execution_id")
        rows += await store.fetchall(
            "SELECT typeof(entry_id), typeof(entry_ms), typeof(event_id), typeof(ts),"
            " typeof(payload), '', '', '' FROM event_log ORDER BY seq")
        return [tuple(r) for r in rows]


async def test_values_over_sqlite_length_limit_go_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose payloads, rows or stored folds would exceed SQLite's longest value
    (SQLITE_LIMIT_LENGTH, lowered here to 256 KiB; no single value is that long) is written
    and loaded row by row: it commits, and stores what the one-step path stores."""
    big = "x" * 10_000  # rows stay under the limit (it bounds a row too); batches do not
    n = batch_rows.INLINE_MAX + 1  # a batch the connection's thread writes
    events = [ev.WorkflowProgress(execution_id=f"big-{i % 150}", completed_steps=i,
                                  data={f"k{i}": big}, ts=i, event_id=f"b{i}")
              for i in range(2 * n)]
    batches = [[StreamEntry(f"{1000 + i}-0", e, encode(e)) for i, e in enumerate(events[:n])],
               [StreamEntry(f"{2000 + i}-0", e, encode(e)) for i, e in enumerate(events[n:])]]

    monkeypatch.setattr(batch_rows, "now_ms", lambda: 1_763_900_000_000)
    # no fold kept between batches: the second batch loads all 150 stored folds, ~6 MiB in hex
    monkeypatch.setattr(store_module, "FOLD_CACHE_BYTES", 0)
    small = await _tables(tmp_path / "small.db", batches, 256 * 1024)
    assert small == await _tables(tmp_path / "default.db", batches)
    assert len(small["event_log"]) == 2 * n


async def test_small_batches_committed_on_the_loop_store_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wks worker` commits small batches on the event loop's thread: same rows, committed."""
    monkeypatch.setattr(batch_rows, "now_ms", lambda: 1_763_900_000_000)
    entries = [e for batch in _batches() for e in batch]
    small = [entries[i:i + 40] for i in range(0, len(entries), 40)]
    on_loop = await _tables(tmp_path / "loop.db", small, commit_on_loop=True)
    threaded = await _tables(tmp_path / "thread.db", small)
    assert on_loop == threaded
    assert len(on_loop["event_log"]) + len(on_loop["event_alias"]) == len(entries)


async def test_rows_built_ahead_in_slices_are_the_same() -> None:
    """What the reader builds ahead, a slice at a time, is what apply_batch would build."""
    entries = [e for batch in _batches() for e in batch]
    assert len(entries) > 2 * ev.DECODE_SLICE
    assert await batch_rows.log_rows_sliced(entries) == batch_rows.log_rows(entries)


@pytest.mark.parametrize("size", [40, batch_rows.INLINE_MAX + 60])
async def test_rows_built_for_other_entries_are_not_used(tmp_path: Path, size: int) -> None:
    """Rows built ahead for another sequence of entries (before a filter, before a split)
    never reach the log: the batch logs its own events, on either path."""
    entries = [e for batch in _batches() for e in batch]
    mine, other = entries[:size], entries[size:2 * size]
    async with await Store.open(tmp_path / "state.db") as store:
        await store.apply_batch(mine, logs=batch_rows.log_rows(other))
        await store.apply_batch(list(mine), logs=batch_rows.log_rows(mine))  # an equal copy
        logged = [r[0] for r in await store.fetchall("SELECT entry_id FROM event_log")]
    assert sorted(logged) == sorted(e.entry_id for e in mine)
    assert not {e.entry_id for e in other} & set(logged)


async def test_an_entry_id_beyond_sqlite_integers_is_refused_not_clamped(tmp_path: Path) -> None:
    """Redis takes explicit ids up to 2^64-1; entry_ms is a 64-bit INTEGER. Such an entry
    fails its batch (the reader then dead-letters it alone), never stored with a clamped id."""
    event = ev.WorkflowCompleted(execution_id="far", ts=1)
    far = StreamEntry(f"{2**63}-0", event, encode(event))
    assert batch_rows.log_rows([far]).records is None  # row by row, where SQLite refuses it
    async with await Store.open(tmp_path / "far.db") as store:
        with pytest.raises(OverflowError):
            await store.apply_batch([far] * (batch_rows.INLINE_MAX + 1))  # the threaded path
        assert await store.scalar("SELECT COUNT(*) FROM event_log") == 0
        near = StreamEntry(f"{2**63 - 1}-{2**63 - 1}", event, encode(event))
        await store.apply_batch([near])
        assert await store.fetchall("SELECT entry_ms, entry_seq FROM event_log") == [
            (2**63 - 1, 2**63 - 1)]


async def test_strings_the_padding_would_change_go_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records pad their strings with spaces, and SQLite trims them off again. Events built
    in code (past the decoder's id check) may hold a space or an empty eventId: their batch
    goes row by row and stores them as given; a batch without them goes as records."""
    plain = [ev.WorkflowProgress(execution_id=f"x{i}", completed_steps=i, ts=i,
                                 event_id=f"e{i}") for i in range(batch_rows.INLINE_MAX + 6)]
    odd = [ev.WorkflowProgress(execution_id="x ", completed_steps=1, ts=1, event_id="e1 "),
           ev.WorkflowProgress(execution_id="y", completed_steps=1, ts=2, event_id="")]
    batches = [[StreamEntry(f"{1000 + i}-0", e, encode(e)) for i, e in enumerate(plain)]]
    batches += [[StreamEntry(f"{200 + i}-0", e, encode(e)) for i, e in enumerate(odd)]]
    assert batch_rows.log_rows(batches[0]).records is not None
    enough = batches[0][:batch_rows.INLINE_MAX]  # past INLINE_MAX, records are considered
    assert batch_rows.log_rows(batches[1][:1] + enough).records is None
    assert batch_rows.log_rows(batches[1][1:] + enough).records is None
    assert batch_rows.log_rows(enough).records is None  # these go row by row anyway

    monkeypatch.setattr(batch_rows, "now_ms", lambda: 1_763_900_000_000)
    as_records = await _tables(tmp_path / "records.db", batches)
    monkeypatch.setattr(batch_rows, "JSON_ROWS", False)
    assert as_records == await _tables(tmp_path / "rows.db", batches)
    logged = {r[1]: (r[4], r[5], r[6]) for r in as_records["event_log"]}  # entry id: ids
    assert logged["200-0"] == ("e1 ", "e1 ", "x ")
    assert logged["201-0"] == ("", "201-0", "y")  # an empty eventId: the entry id is the key


async def test_an_execution_id_holding_a_nul_finds_its_stored_fold(tmp_path: Path) -> None:
    """An execution id built in code (past the decoder's id check) with a NUL character:
    a threaded batch loads its stored fold whole, as json_each would cut the id there."""
    nul = "run\x00one"

    def batch(event: ev.WorkflowEvent, base: int) -> list[StreamEntry]:
        filler = [ev.WorkflowStarted(execution_id=f"pad-{base}-{i}", workflow_id="wf",
                                     total_steps=1, ts=1)
                  for i in range(batch_rows.INLINE_MAX)]  # a batch the thread writes
        return [StreamEntry(f"{base + i}-0", e, encode(e))
                for i, e in enumerate([event, *filler])]

    path = tmp_path / "nul.db"
    async with await Store.open(path) as first, await Store.open(path) as second:
        await first.apply_batch(batch(ev.WorkflowStarted(
            execution_id=nul, workflow_id="wf-nul", total_steps=4, ts=1), 1000))
        # another connection: nothing cached, the stored fold is loaded
        await second.apply_batch(batch(ev.WorkflowProgress(
            execution_id=nul, completed_steps=2, ts=2), 2000))
        state = await second.get_state(nul)
    assert state is not None
    assert (state.workflow_id, state.total_steps, state.completed_steps) == ("wf-nul", 4, 2)
