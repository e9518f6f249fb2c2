"""The progress display: rate, ETA, silence when not asked, lines when asked."""

from __future__ import annotations

import io

from wks.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_follow_the_count() -> None:
    """Rate is units per second since the start and ETA the rest at that rate."""
    clock = FakeClock()
    p = Progress(1000, "replay", stream=io.StringIO(), enabled=False, clock=clock)
    clock.now += 2
    p.update(250)
    assert p.rate == 125
    assert p.eta == 6
    assert "250/1000 (25%)" in p.line()
    assert "ETA 0:06" in p.line()


def test_silent_without_a_terminal_unless_asked() -> None:
    """Not a TTY and not asked: nothing is written."""
    out = io.StringIO()
    p = Progress(10, "x", stream=out)
    p.update(10)
    p.close()
    assert out.getvalue() == ""


def test_asked_without_a_terminal_prints_plain_lines() -> None:
    """Asked explicitly: plain lines (no carriage returns), ending with the total time."""
    out = io.StringIO()
    clock = FakeClock()
    p = Progress(None, "trim", stream=out, enabled=True, clock=clock)
    p.update(5)
    clock.now += 1
    p.close()
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "\r" not in out.getvalue()
    assert lines[-1].startswith("trim  5  5/s  in 0:01")
