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


def _reader(handler: Any) -> GroupReader:
    return GroupReader(aioredis.Redis(), Keys("t"), name="workflow", stream="s", group="g",
                       handler=handler, max_deliveries=5)


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
    reader = _reader(handler)
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


def _good_batch() -> list[RawEntry]:
    payloads = [
        b'{"type":"workflow.started","executionId":"a","workflowId":"w","totalSteps":2,'
        b'"ts":1,"data":{"k":"\\u00e9"},"owner":"o","eventId":"e1"}',
        b'{"type":"workflow.progress","executionId":"a","completedSteps":1,"ts":2,'
        b'"currentStep":"s1","unknown":[1,2]}',
        b'{"type":"workflow.failed","executionId":"b","error":"boom","ts":3}',
        b'{"type":"workflow.cancelled","executionId":"c","ts":4,"reason":"r"}',
    ]
    batch = [RawEntry(f"{i + 1}-0", {b"event": p}) for i, p in enumerate(payloads)]
    batch[1].deliveries = 5  # at maxDeliveries: still applied
    return batch


def test_an_all_good_slice_decodes_as_entry_by_entry_does() -> None:
    """The usual slice (every entry has its event, within maxDeliveries, and decodes) takes
    the reader's few-pass path: the same entries, events and payloads, in order."""
    by_slice = asyncio.run(_reader(BySlice())._decode(_good_batch()))
    one_by_one = asyncio.run(_reader(OneByOne())._decode(_good_batch()))
    assert by_slice.dead == one_by_one.dead == []
    assert by_slice.good == one_by_one.good
    assert [e.entry_id for e in by_slice.good] == ["1-0", "2-0", "3-0", "4-0"]


class Raising(OneByOne):
    def decode_many(self, raws: list[bytes]) -> list[Any] | None:
        raise RuntimeError("a decoder bug")


def test_a_decode_many_that_raises_is_reported_once_and_loses_nothing() -> None:
    """A `decode_many` bug is logged once for the slice, and its entries are decoded one by
    one instead."""
    errors: list[Any] = []
    sink = logger.add(errors.append, level="ERROR")
    try:
        out = asyncio.run(_reader(Raising())._decode(_good_batch()))
    finally:
        logger.remove(sink)
    assert len(errors) == 1
    assert "RuntimeError" in str(errors[0])
    assert [e.entry_id for e in out.good] == ["1-0", "2-0", "3-0", "4-0"]
    assert out.dead == []


class Declining(OneByOne):
    def __init__(self) -> None:
        self.calls = 0

    def decode_many(self, raws: list[bytes]) -> list[Any] | None:
        self.calls += 1
        return None


def test_a_slice_decode_many_declines_is_not_offered_to_it_again() -> None:
    """A slice `decode_many` declined (a bad payload in it, say) goes entry by entry
    without a second slice decode."""
    handler = Declining()
    out = asyncio.run(_reader(handler)._decode(_good_batch()))
    assert handler.calls == 1
    assert [e.entry_id for e in out.good] == ["1-0", "2-0", "3-0", "4-0"]
