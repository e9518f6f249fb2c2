"""SIGTERM/SIGINT handling of the long-running commands (`wks.cli.runtime`)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from wks.cli.runtime import Signals, catch_signals, supervise


async def test_a_signal_while_starting_stops_the_services_before_they_run() -> None:
    ran: list[str] = []

    async def service(stop: asyncio.Event) -> None:
        ran.append("service")

    with catch_signals(1.0) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(signals.stop.wait(), 5)
        assert await supervise({"s": service}, 1.0, signals) == 0
    assert ran == []


async def test_a_signal_after_start_up_lets_the_services_finish() -> None:
    finished: list[str] = []
    started = asyncio.Event()

    async def service(stop: asyncio.Event) -> None:
        started.set()
        await stop.wait()
        finished.append("service")

    with catch_signals(5.0) as signals:
        run = asyncio.create_task(supervise({"s": service}, 5.0, signals))
        await started.wait()
        assert signals.supervised
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(run, 5) == 0
    assert finished == ["service"]


def test_a_second_signal_while_starting_interrupts_and_once_supervised_aborts() -> None:
    starting = Signals(1.0)
    starting.on_signal("SIGINT")
    assert starting.stop.is_set()
    assert starting.halt.is_set()  # a start-up thread waiting for a server gives up
    assert not starting.abort.is_set()
    with pytest.raises(KeyboardInterrupt):
        starting.on_signal("SIGINT")
    starting.on_signal("SIGINT")  # once: a third must not cut short the server's stop

    running = Signals(1.0, supervised=True)
    running.on_signal("SIGTERM")
    running.on_signal("SIGTERM")  # the supervisor cancels the services: no interrupt here
    assert running.abort.is_set()
