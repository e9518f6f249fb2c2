"""A small progress display on stderr: count, rate and ETA, for long CLI operations.

    progress = Progress(total, "replay")
    for page in pages:
        progress.update(len(page))
    progress.close()

On a terminal it redraws one line in place (at most ~10 times a second); when asked to show
progress without a terminal (`enabled=True`, e.g. a `--progress` flag, or output piped to a
log) it prints a plain line every few seconds instead, so logs stay readable. Off by default
when stderr is not a TTY: scripts and tests see nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

_TTY_EVERY = 0.1  # seconds between redraws on a terminal
_LOG_EVERY = 5.0  # seconds between lines when not a terminal


def _count(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f}M"
    if n >= 10_000:
        return f"{n / 1000:.1f}k"
    return f"{int(n)}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts work done toward `total` (None: unknown) and shows it with its rate and ETA."""

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self.enabled = self._tty if enabled is None else enabled
        self._clock = clock or time.monotonic
        self._started = self._clock()
        self._last_draw = float("-inf")
        self._width = 0
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return max(self._clock() - self._started, 1e-9)

    @property
    def rate(self) -> float:
        """Units per second since the start."""
        return self.done / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; None when the total or the rate is unknown."""
        if self.total is None or self.done <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def line(self) -> str:
        """The text shown: label, count (of total, percent), rate, elapsed or ETA."""
        parts = [self.label]
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            parts.append(f"{_count(self.done)}/{_count(self.total)} ({pct:.0f}%)")
        else:
            parts.append(_count(self.done))
        parts.append(f"{_count(self.rate)}/s")
        eta = self.eta
        if self._closed:
            parts.append(f"in {_duration(self.elapsed)}")
        elif eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        else:
            parts.append(f"elapsed {_duration(self.elapsed)}")
        return "  ".join(parts)

    def update(self, n: int = 1) -> None:
        """Record `n` more units done; redraw when due."""
        self.done += n
        if not self.enabled or self._closed:
            return
        now = self._clock()
        if now - self._last_draw >= (_TTY_EVERY if self._tty else _LOG_EVERY):
            self._last_draw = now
            self._draw(final=False)

    def close(self) -> None:
        """Show the final line (count, rate, total time) and end it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(final=True)

    def _draw(self, *, final: bool) -> None:
        text = self.line()
        if self._tty:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self._stream.write(f"\r{text}{pad}" + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
