"""A new database gets the store's page size; one made with another keeps it, checkpoints
after as many bytes of WAL, and folds the same states."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from tests.workload import workload
from wks.events import StreamEntry, encode
from wks.state import fold_events, to_state
from wks.store import CHECKPOINT_BYTES, PAGE_SIZE, Store


async def _pragmas(store: Store) -> tuple[int, int]:
    return (int(await store.scalar("PRAGMA page_size")),
            int(await store.scalar("PRAGMA wal_autocheckpoint")))


def _entries() -> list[StreamEntry]:
    events = workload(2000, 150, random.Random(5))
    return [StreamEntry(f"{1000 + i}-0", e, encode(e)) for i, e in enumerate(events)]


async def _fold(store: Store, entries: list[StreamEntry]) -> None:
    for start in range(0, len(entries), 700):  # threaded batches, then a small inline one
        await store.apply_batch(entries[start:start + 700])


OTHER = 16384  # a page size other than the store's


async def test_a_new_database_has_the_store_page_size(tmp_path: Path) -> None:
    assert PAGE_SIZE != OTHER  # else the test below proves nothing
    async with await Store.open(tmp_path / "new.db") as store:
        assert await _pragmas(store) == (PAGE_SIZE, CHECKPOINT_BYTES // PAGE_SIZE)


async def test_an_existing_database_keeps_its_page_size(tmp_path: Path) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    with sqlite3.connect(old) as db:  # made elsewhere, or converted by hand
        db.execute(f"PRAGMA page_size = {OTHER}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE earlier (x)")
    entries = _entries()
    expected = fold_events([(e.event, e.key) for e in entries])
    for path in (old, new):
        async with await Store.open(path) as store:
            await _fold(store, entries)
            states = {eid: await store.get_state(eid) for eid in expected}
            assert states == {eid: to_state(f) for eid, f in expected.items()}
            if path == old:
                assert await _pragmas(store) == (OTHER, CHECKPOINT_BYTES // OTHER)
    # and opened again, each is still what it was created as
    for path, size in ((old, OTHER), (new, PAGE_SIZE)):
        async with await Store.open(path) as store:
            assert (await _pragmas(store))[0] == size
