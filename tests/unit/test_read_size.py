"""ReadSize: how many entries a read asks for, from the size of the entries seen."""

from __future__ import annotations

from wks.redis import ReadSize


def _entries(n: int, size: int) -> list[tuple[bytes, list[bytes]]]:
    return [(b"%d-0" % i, [b"event", b"x" * size]) for i in range(n)]


def test_first_read_assumes_big_entries_then_small_ones_reach_the_limit() -> None:
    size = ReadSize(20_000, budget=64 << 20)
    assert size.count == 1024  # 64 MiB at 64 KiB an entry
    size.saw(_entries(1024, 250))
    assert size.count == 20_000


def test_big_entries_shrink_the_read_to_the_budget() -> None:
    size = ReadSize(20_000, budget=64 << 20)
    size.saw(_entries(500, 250))
    size.saw(_entries(300, 200_000))
    assert size.count == (64 << 20) // (200_000 + len(b"event"))
    small_budget = ReadSize(20_000, budget=1 << 20)
    small_budget.saw(_entries(2, 2 << 20))  # entries bigger than the budget: one at a time
    assert small_budget.count == 1


def test_nothing_read_changes_nothing_and_deleted_entries_count_as_small() -> None:
    size = ReadSize(100, budget=1 << 20)
    size.saw([])
    assert size.count == 16  # 1 MiB at 64 KiB
    size.saw([(b"1-0", None), (b"2-0", None)])
    assert size.count == 100
