"""Garbage-collector settings for the long-running commands (up, worker, api, replay, bench).

A fold batch keeps about ten container objects per entry alive until it commits: long
enough for CPython to move them into its oldest generation. Each time that generation has
grown by a quarter, CPython walks every object the process holds, and with 20,000-entry
batches that came round every ~10,000 events: over a fifth of a consumer's time went to
full collections that found nothing to free (the fold makes no reference cycles; they die
by reference count). So:

- `gc.freeze()` after start-up moves what the imports built out of every later collection;
- full collections wait for a hundred times as many young collections as CPython's default
  (one per ~7 million allocations, ~50 ms each on a consumer's heap), which still bounds
  cyclic garbage; the young collections find nearly all of it anyway.

Young collections keep their defaults: most objects die young, and those collections are
cheap. Python 3.14's incremental collector reads the thresholds differently and is left
alone.
"""

from __future__ import annotations

import gc
import sys

FULL_COLLECTION_SPACING = 100  # times CPython's default wait between full collections
_tuned = False


def tune() -> None:
    """Freeze what start-up built and space full collections out; once per process."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    gc.collect()  # nothing collectable gets frozen
    gc.freeze()
    if sys.version_info < (3, 14):
        young, middle, full = gc.get_threshold()
        gc.set_threshold(young, middle, full * FULL_COLLECTION_SPACING)
