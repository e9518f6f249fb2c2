"""A consumer's batch sorted into events and dead letters, by slice or entry by entry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from loguru import logger

from consumers.acks import RawEntry
from consumers.reader import GroupReader
from wks import events as ev
from wks.keys import Keys


class OneByOne:
    """A handler without `decode_many`: the reader decodes each entry."""

    def decode(self, raw: bytes) -> Any:
        return ev.decode_workflow(raw)

    async def prepare(self, items: Any) -> None:
        return None

    async def apply(self, items: Any, prepared: Any = None) -> None:
        return None


class BySlice(OneByOne):
    def decode_many(self, raws: list[bytes]) -> list[Any] | None:
        return ev.decode_workflows(raws)


def _batch() -> list[RawEntry]:
    good = b'{"type":"workflow.completed","executionId":"%d","ts":1}'
    fields = [
        {b"event": good % 1}, {b"other": b"x"}, {b"event": b"{oops"}, {b"event": good % 2},
        {b"event": good % 3}, None, {b"event": good % 4},
    ]
    batch = [RawEntry(f"{i + 1}-0", f) for i, f in enumerate(fields)]
    batch[4].deliveries = 9  # over maxDeliveries
    return batch


@pytest.mark.parametrize("handler", [OneByOne(), BySlice()], ids=["one-by-one", "by-slice"])
@pytest.mark.parametrize("bad", [False, True], ids=["all-good-but-dead", "a-bad-payload"])
def test_events_and_dead_letters_come_out_in_stream_order(handler: Any, bad: bool) -> None:
    """Good entries and dead letters keep the stream's order whichever path decodes them
    (a slice declined for one bad payload goes entry by entry), and a handler without
    `decode_many` is decoded entry by entry without complaint."""
    reader = GroupReader(aioredis.Redis(), Keys("t"), name="workflow", stream="s", group="g",
                         handler=handler, max_deliveries=5)
    batch = _batch() if bad else [r for r in _batch() if r.entry_id != "3-0"]
    errors: list[Any] = []
    sink = logger.add(errors.append, level="ERROR")
    try:
        out = asyncio.run(reader._decode(batch))
    finally:
        logger.remove(sink)
    assert errors == []
    assert [e.entry_id for e in out.good] == ["1-0", "4-0", "7-0"]
    assert [e.event.execution_id for e in out.good] == ["1", "2", "4"]
    expected = ["2-0", "3-0", "5-0"] if bad else ["2-0", "5-0"]
    assert [raw.entry_id for raw, _ in out.dead] == expected
    reasons = {raw.entry_id: reason for raw, reason in out.dead}
    assert "maxDeliveries 5" in reasons["5-0"]
    if bad:
        assert reasons["3-0"].startswith("not JSON")
