"""The fold (SPEC section 4): a pure, deterministic, commutative and idempotent merge."""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from wks import events as ev
from wks.state import Fold, apply, combine, fold_events, merge, mirror_fields, state_dict, to_state

EXECUTIONS = ["a", "b", "c"]
Keyed = tuple[ev.WorkflowEvent, str]

ts_s = st.integers(min_value=0, max_value=20)  # a small range forces stamp ties
key_s = st.sampled_from(["k1", "k2", "k3", "1-0", "2-0", "10-0", "9-1"])
data_s = st.none() | st.dictionaries(
    st.sampled_from(["x", "y", "z"]), st.integers(-3, 3) | st.text(max_size=2), max_size=3)


@st.composite
def keyed_event(draw: Any) -> Keyed:
    eid = draw(st.sampled_from(EXECUTIONS))
    ts = draw(ts_s)
    kind = draw(st.sampled_from(["started", "progress", "completed", "failed", "cancelled"]))
    event: ev.WorkflowEvent
    if kind == "started":
        event = ev.WorkflowStarted(
            execution_id=eid, workflow_id=draw(st.sampled_from(["w1", "w2"])),
            total_steps=draw(st.integers(0, 10)), owner=draw(st.none() | st.just("ann")),
            data=draw(data_s), ts=ts)
    elif kind == "progress":
        event = ev.WorkflowProgress(
            execution_id=eid, completed_steps=draw(st.integers(0, 12)),
            current_step=draw(st.none() | st.sampled_from(["s1", "s2"])), data=draw(data_s),
            ts=ts)
    elif kind == "completed":
        event = ev.WorkflowCompleted(execution_id=eid, data=draw(data_s), ts=ts)
    elif kind == "failed":
        event = ev.WorkflowFailed(execution_id=eid, error=draw(st.sampled_from(["e1", "e2"])),
                                  ts=ts)
    else:
        event = ev.WorkflowCancelled(execution_id=eid, ts=ts)
    return event, draw(key_s)


events_s = st.lists(keyed_event(), max_size=40)


def states(folds: dict[str, Fold]) -> dict[str, dict[str, Any]]:
    return {eid: state_dict(to_state(f)) for eid, f in folds.items()}


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(events_s, st.randoms(use_true_random=False))
    def test_any_order_gives_the_same_state(self, events: list[Keyed], rnd: random.Random) -> None:
        """Folding a permutation of the same events gives the same folds and states."""
        shuffled = events[:]
        rnd.shuffle(shuffled)
        assert fold_events(shuffled) == fold_events(events)
        assert states(fold_events(shuffled)) == states(fold_events(events))

    @settings(max_examples=300, deadline=None)
    @given(events_s, st.randoms(use_true_random=False))
    def test_duplicates_change_nothing(self, events: list[Keyed], rnd: random.Random) -> None:
        """Redelivered events (any number of copies, anywhere) leave the state unchanged."""
        dupes = events + [rnd.choice(events) for _ in range(len(events))] if events else []
        rnd.shuffle(dupes)
        assert fold_events(dupes) == fold_events(events)

    @settings(max_examples=200, deadline=None)
    @given(events_s, st.integers(0, 40), st.integers(0, 40))
    def test_combine_is_associative_and_commutative(
        self, events: list[Keyed], i: int, j: int
    ) -> None:
        """Folding the parts separately and combining them equals folding the whole."""
        only_a = [(e, k) for e, k in events if e.execution_id == "a"]
        i, j = sorted((min(i, len(only_a)), min(j, len(only_a))))
        parts = [fold_events(only_a[:i]), fold_events(only_a[i:j]), fold_events(only_a[j:])]
        x, y, z = (p.get("a", Fold(execution_id="a")) for p in parts)
        whole = fold_events(only_a).get("a", Fold(execution_id="a"))
        assert combine(combine(x, y), z) == combine(x, combine(y, z)) == whole
        assert combine(x, y) == combine(y, x)
        assert combine(x, x) == x

    @settings(max_examples=300, deadline=None)
    @given(events_s, st.integers(0, 40))
    def test_folding_into_stored_folds_is_their_join(self, events: list[Keyed], i: int) -> None:
        """What the store does with a batch: fold its events onto the loaded folds (in place,
        new executions added). It must equal combining the stored folds with the batch's."""
        stored = fold_events(events[:i])
        batch = fold_events(events[i:])
        joined = {eid: combine(stored[eid], f) if eid in stored else f
                  for eid, f in batch.items()}
        into = fold_events(events[i:], {eid: msgspec.structs.replace(f, data_w=dict(f.data_w))
                                        for eid, f in stored.items()})
        assert {eid: into[eid] for eid in batch} == joined
        assert {eid: f for eid, f in into.items() if eid not in batch} == {
            eid: f for eid, f in stored.items() if eid not in batch}  # untouched ones stay

    @settings(max_examples=200, deadline=None)
    @given(events_s, keyed_event())
    def test_merge_is_idempotent_and_pure(self, events: list[Keyed], extra: Keyed) -> None:
        """merge(merge(s, e), e) == merge(s, e), and merge never modifies its input."""
        event, key = extra
        base = fold_events(events).get(event.execution_id)
        snapshot = None if base is None else to_state(base)
        once = merge(base, event, key)
        assert merge(once, event, key) == once
        if base is not None:
            assert to_state(base) == snapshot

    @settings(max_examples=100, deadline=None)
    @given(events_s)
    def test_mirror_fields_cover_every_state_field(self, events: list[Keyed]) -> None:
        """The hand-built mirror hash holds exactly the state's non-null fields, as strings."""
        for fold in fold_events(events).values():
            state = to_state(fold)
            generic = {k: (msgspec.json.encode(v).decode() if k == "data" else str(v))
                       for k, v in msgspec.to_builtins(state).items() if v is not None}
            assert mirror_fields(state) == generic

    @settings(max_examples=100, deadline=None)
    @given(events_s)
    def test_derived_values_stay_in_bounds(self, events: list[Keyed]) -> None:
        """progress is 0..100 and updatedAt >= startedAt for every reachable state."""
        for state in fold_events(events).values():
            s = to_state(state)
            assert 0 <= s.progress <= 100
            assert s.updated_at >= min(e.ts for e, _ in events if e.execution_id == s.execution_id)


def fold(*events: ev.WorkflowEvent) -> dict[str, Any]:
    f = None
    for i, e in enumerate(events):
        f = merge(f, e, e.event_id or f"{i + 1}-0")
    assert f is not None
    return state_dict(to_state(f))


def started(ts: int = 10, **kw: Any) -> ev.WorkflowStarted:
    base: dict[str, Any] = {"execution_id": "x", "workflow_id": "wf", "total_steps": 4, "ts": ts}
    base.update(kw)
    return ev.WorkflowStarted(**base)


def progress(ts: int, n: int, step: str | None = None, **kw: Any) -> ev.WorkflowProgress:
    return ev.WorkflowProgress(execution_id="x", completed_steps=n, current_step=step, ts=ts,
                               **kw)


class TestSemantics:
    def test_progress_only_execution_has_no_workflow_fields(self) -> None:
        """Seen only through progress: running, no workflowId/totalSteps/owner, progress 0."""
        s = fold(progress(20, 2, "two"), progress(15, 1, "one"))
        assert s["status"] == "running"
        assert "workflowId" not in s
        assert "totalSteps" not in s
        assert "owner" not in s
        assert s["completedSteps"] == 2
        assert s["progress"] == 0
        assert s["startedAt"] == 15
        assert s["updatedAt"] == 20
        assert s["currentStep"] == "two"

    def test_progress_and_estimate_while_running(self) -> None:
        """progress = floor(100*done/total); estimate = start + elapsed*total/done."""
        s = fold(started(ts=1000), progress(1300, 3, "c"))
        assert s["progress"] == 75
        assert s["estimatedCompletion"] == 1000 + 300 * 4 // 3

    def test_completed_reports_all_steps_and_100(self) -> None:
        """Completed: progress 100, completedSteps = totalSteps, no estimate."""
        s = fold(started(), progress(20, 1), ev.WorkflowCompleted(execution_id="x", ts=30))
        assert (s["status"], s["progress"], s["completedSteps"]) == ("completed", 100, 4)
        assert "estimatedCompletion" not in s

    def test_late_progress_does_not_reopen_a_terminal_state(self) -> None:
        """A progress event with a later ts than completion leaves it completed."""
        s = fold(started(), ev.WorkflowCompleted(execution_id="x", ts=30), progress(99, 2))
        assert s["status"] == "completed"
        assert s["updatedAt"] == 99

    def test_failure_sets_error_and_a_later_terminal_event_wins(self) -> None:
        """The terminal event with the greatest stamp sets status; error only for failure."""
        failed = ev.WorkflowFailed(execution_id="x", error="disk full", ts=30)
        assert fold(started(), failed)["error"] == "disk full"
        s = fold(started(), failed, ev.WorkflowCompleted(execution_id="x", ts=40))
        assert s["status"] == "completed"
        assert "error" not in s

    def test_first_started_event_wins_its_fields(self) -> None:
        """workflowId, totalSteps, owner and startedAt come from the least-stamped start."""
        s = fold(started(ts=50, workflow_id="late", owner="bob"),
                 started(ts=10, workflow_id="early", total_steps=8, owner="ann"))
        assert (s["workflowId"], s["totalSteps"], s["owner"], s["startedAt"]) == (
            "early", 8, "ann", 10)

    def test_data_is_last_writer_wins_per_key(self) -> None:
        """Each data key takes the value of the greatest-stamped event carrying it."""
        s = fold(started(ts=10, data={"a": 1, "b": 1}), progress(30, 1, data={"a": 3}),
                 progress(20, 1, data={"a": 2, "c": 2}))
        assert s["data"] == {"a": 3, "b": 1, "c": 2}

    def test_same_ts_is_ordered_by_event_id(self) -> None:
        """With equal ts, the eventId compared as a string decides."""
        s = fold(progress(10, 1, "first", event_id="p-2"), progress(10, 2, "second",
                                                                   event_id="p-1"))
        assert s["currentStep"] == "first"

    def test_mirror_fields_are_strings_and_skip_absent(self) -> None:
        """The Redis mirror: camelCase strings, data as JSON, absent fields left out."""
        state = to_state(fold_events([(progress(5, 1), "1-0")])["x"])
        fields = mirror_fields(state)
        assert fields["completedSteps"] == "1"
        assert fields["data"] == "{}"
        assert "workflowId" not in fields
        assert "error" not in fields
        assert all(isinstance(v, str) for v in fields.values())

    def test_apply_in_place_matches_merge(self) -> None:
        """The in-place apply used by the store equals the pure merge."""
        f = Fold(execution_id="x")
        apply(f, started(), "1-0")
        assert f == merge(None, started(), "1-0")
