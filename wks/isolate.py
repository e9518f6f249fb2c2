"""Finding the entries of a batch that fail alone, by halving.

A batch's apply can fail for one entry (a poison entry, a bug its content triggers); the
rest of the batch must not be held back by it. The fold does not depend on order or
grouping, so the batch can be split: halves that apply are done, halves that fail are split
again, down to single entries. That costs about 2·log2(n) applies per failing entry
instead of one apply per entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def failing_alone(
    apply: Callable[[list[T]], Awaitable[object]], entries: Sequence[T],
    passthrough: tuple[type[BaseException], ...],
) -> tuple[list[T], list[tuple[T, Exception]]]:
    """Apply `entries` in halves: those applied, and each entry that fails alone with its
    error. An error of a `passthrough` type (transient: Redis down, the store) is raised."""
    applied: list[T] = []
    failed: list[tuple[T, Exception]] = []
    halves = [list(entries[len(entries) // 2:]), list(entries[:len(entries) // 2])]
    while halves:  # a stack: the first half first
        part = halves.pop()
        if not part:
            continue
        try:
            await apply(part)
            applied.extend(part)
        except passthrough:
            raise
        except Exception as exc:
            if len(part) == 1:
                failed.append((part[0], exc))
            else:
                halves += [part[len(part) // 2:], part[:len(part) // 2]]
    return applied, failed


def apply_failed(exc: Exception) -> str:
    """The reason given for an entry that failed alone."""
    return f"apply failed: {type(exc).__name__}: {exc}"
