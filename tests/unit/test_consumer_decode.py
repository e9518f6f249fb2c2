"""A consumer's slice decoded at once gives the verdict and the events that decoding each
entry gives (`decode_workflows` against `decode_workflow`)."""

from __future__ import annotations

import pytest

from producers.loadgen import plan
from tests.integration.test_producer_checks import _bad_or_edge_events
from wks import events as ev
from wks.errors import BadEventError

_GOOD = b'{"type":"workflow.completed","executionId":"x","ts":1}'
_RAW_EDGES = [
    _GOOD,
    b' ' + _GOOD + b' ',  # blanks around: one value all the same
    b'{"type":"workflow.completed","executionId":"x","ts":1,"eventId":""}',
    b'{"type":"workflow.completed","executionId":"x","ts":1,"note":"a\\ud800b"}',  # lone
    b'{"type":"workflow.completed","executionId":"x","ts":1,"note":"caf\xff"}',  # not UTF-8
    b'{"type":"workflow.completed","executionId":"x","ts":1},' + _GOOD,  # two values
    b'{"type":"workflow.completed","executionId":"x","ts":1',  # cut short
    b'{"type":"workflow.completed","executionId":"x y","ts":1}',  # an id out of its set
    b'[' * 200 + b']' * 200,
    b'',
]


def _one_by_one(payload: bytes) -> ev.WorkflowEvent | None:
    try:
        return ev.decode_workflow(payload)
    except BadEventError:
        return None


def _payloads() -> list[bytes]:
    return [ev.encode(e) for e in _bad_or_edge_events()] + _RAW_EDGES


@pytest.mark.parametrize("payload", _payloads(), ids=lambda p: repr(p)[:50])
def test_a_slice_is_decoded_at_once_only_as_each_entry_would_be(payload: bytes) -> None:
    """Alone or among ordinary entries: when the slice path answers, its events are the
    entry-by-entry ones; it answers None whenever an entry would be refused."""
    ordinary = [ev.encode(e) for e in plan(1500, 100, seed=3)]
    for batch in ([payload], [*ordinary[:700], payload, *ordinary[700:]]):
        events = ev.decode_workflows(batch)
        one_by_one = [_one_by_one(p) for p in batch]
        if None in one_by_one:
            assert events is None
        elif events is not None:
            assert events == one_by_one


def test_ordinary_slices_take_the_fast_path() -> None:
    """What producers send every day is decoded at once (else the path would be dead)."""
    for seed in range(3):
        batch = [ev.encode(e) for e in plan(1000, 50, seed=seed)]
        events = ev.decode_workflows(batch)
        assert events is not None
        assert events == [ev.decode_workflow(p) for p in batch]
    assert ev.decode_workflows([]) == []


def test_an_empty_event_id_is_no_id_on_both_paths() -> None:
    payload = b'{"type":"workflow.completed","executionId":"x","ts":1,"eventId":""}'
    events = ev.decode_workflows([payload])
    assert events is not None
    assert events[0].event_id is None
    assert ev.decode_workflow(payload).event_id is None
